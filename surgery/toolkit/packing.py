"""Compact checkpoints: modules that store their weights in fewer bits than they compute with.

A module takes part by defining three methods; the transformers integration calls them:

- ``surgery_pack(prefix, state_dict)``: replace its float entries in ``state_dict`` with packed ones
  (called by ``save_pretrained``);
- ``surgery_packed_away(prefix)``: the keys it removed, which a checkpoint therefore lacks;
- ``surgery_unpack()``: rebuild the float tensors from the packed ones after loading.
"""

from __future__ import annotations

import torch
from torch import nn

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Boolean (rows, n) to uint8 (rows, ceil(n / 8)), least significant bit first."""
    rows, n = bits.shape
    padded = torch.zeros(rows, -(-n // 8) * 8, dtype=torch.uint8, device=bits.device)
    padded[:, :n] = bits.to(torch.uint8)
    return (padded.view(rows, -1, 8) * _BIT_WEIGHTS.to(bits.device)).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """uint8 (rows, ceil(n / 8)) back to boolean (rows, n)."""
    bits = (packed.unsqueeze(-1) & _BIT_WEIGHTS.to(packed.device)) != 0
    return bits.reshape(packed.shape[0], -1)[:, :n]


def packed_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if hasattr(module, "surgery_pack")]


def packed_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The model's state_dict with every packing module packed, or None when none packs."""
    modules = packed_modules(model)
    if not modules:
        return None
    state = model.state_dict()
    for name, module in modules:
        module.surgery_pack(f"{name}." if name else "", state)
    return state


def packed_away_keys(model: nn.Module) -> set[str]:
    return {
        key for name, module in packed_modules(model) for key in module.surgery_packed_away(f"{name}." if name else "")
    }


def unpack_all(model: nn.Module) -> None:
    for _, module in packed_modules(model):
        module.surgery_unpack()
