"""Evaluation helpers: the real-image development set and the automatic clicker."""
