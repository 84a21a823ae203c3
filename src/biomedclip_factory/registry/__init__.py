"""The MLflow face of the model: a pyfunc flavour, registration, aliases."""
