"""Layer 2, data: the digits data that ships with scikit-learn, and image datasets for recovery and
measurement (local folders, Hub ids). Imports nothing of surgery but errors."""
