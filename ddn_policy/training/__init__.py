"""Training utilities shared by every method."""
