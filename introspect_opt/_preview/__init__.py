"""Schedule preview."""
