"""MLflow tracking and registry: connecting, lineage, the pyfunc model, promotion and prediction."""
