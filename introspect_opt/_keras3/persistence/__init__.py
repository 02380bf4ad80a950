"""Keras 3 persistence."""
