"""The stage engine: stage records, cache keys, Prefect caching, lineage, locks and recovery."""
