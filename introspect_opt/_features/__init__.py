"""Opt-in features."""
