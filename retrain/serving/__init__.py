"""Serving: fast scoring of raw rows by a saved model (no MLflow here)."""
