"""Built-in surgery plugins, one folder per method (installed as ``surgery.plugins``)."""
