"""Drift and label-quality checks of a snapshot against the reference data (the drift stage)."""
