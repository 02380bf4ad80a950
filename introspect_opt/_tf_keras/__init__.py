"""The Keras 2 (tf_keras) world."""
