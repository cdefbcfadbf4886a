"""Layer 4, the built-in surgery plugins, one folder per method (installed as ``surgery.plugins``)."""
