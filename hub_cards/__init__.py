"""Model-card templates (installed as ``surgery.hub_cards``)."""
