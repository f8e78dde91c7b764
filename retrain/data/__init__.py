"""Data: read sources, infer the schema, validate, detect leakage and drift, split."""
