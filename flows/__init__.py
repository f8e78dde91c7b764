"""Wiring: the Prefect flow that chains the stage tasks, and the `retrain` CLI."""
