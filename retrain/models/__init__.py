"""Models: the family registry, estimators, tuning, baselines."""
