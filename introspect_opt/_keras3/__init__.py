"""The Keras 3 world."""
