"""Adapters to the outside systems: the DVC store and the MLflow registry, tracking and packaging."""
