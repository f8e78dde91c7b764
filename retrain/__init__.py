"""retrain: the pure ML logic of the pipeline (no Prefect, no file or MLflow I/O)."""
