"""What both Keras worlds share: names, the manifest's format, refused-load errors.

Nothing here imports keras, tensorflow or tf_keras.
"""
