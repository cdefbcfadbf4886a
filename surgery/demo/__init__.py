"""Layer 9, demo: the built-in digits model, the tiny-model zoo and the end-to-end demo."""
