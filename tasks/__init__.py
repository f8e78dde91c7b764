"""One module per stage: the Prefect task that reads inputs, calls retrain/, writes outputs, logs."""
