"""Layer 3, checkpoint: recipes, the transformers integration (quantizer registration), replay, load and
save. Imports core and the toolkit (packed weights); never a plugin."""
