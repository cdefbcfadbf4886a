"""Layer 5, evaluation: accuracy, figures (speed, size, FLOPs) and the bundled metrics. Imports core,
checkpoint, toolkit and data."""
