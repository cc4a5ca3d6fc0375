"""Training: the Lightning module and data module, the run's builder and pre-flight checks, checkpoints, resume."""
