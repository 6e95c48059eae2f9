"""SageMaker training entry points (python -m training_jobs.<job>)."""
