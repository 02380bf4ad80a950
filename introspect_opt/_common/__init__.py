"""What both Keras worlds share. Nothing here imports keras, tensorflow or tf_keras."""
