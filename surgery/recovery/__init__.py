"""Layer 5, recovery: distillation fine-tuning after surgery (config, losses, schedule, checkpoints,
loop) and the plugins' training hooks. Imports core, checkpoint, toolkit, data and evaluation; never a
plugin. ``recover`` and its config are the public names."""

from surgery.recovery.config import RecoveryConfig, RecoveryResult
from surgery.recovery.lora import LoraOptions
from surgery.recovery.loop import recover

__all__ = ["LoraOptions", "RecoveryConfig", "RecoveryResult", "recover"]
