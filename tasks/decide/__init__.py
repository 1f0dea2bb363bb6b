"""Deciding: retrain or skip, evaluate, gates, publish, the model registry and the run summary."""
