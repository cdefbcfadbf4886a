"""One model's tensor and module names in another layout of its anatomy: how surgery checkpoints and
recipes cross transformers versions.

A surgery checkpoint and its recipe name tensors and modules in the anatomy's *reference* layout (its
first one: transformers 4.57's names for ViT, DeiT and Swin), whichever layout the model that wrote
them had. A name moves through the roles two layouts share: the longest role pattern that matches it
in one layout (its indices captured) gives the same role's path in the other, and the rest of the
name is kept, so what a plugin adds under a role (an agent attention's biases under ``attention``, a
packed weight under ``query``) moves with it. The encoder is a container: its own name moves, what is
under it moves through its own roles only (5.9's encoder is the backbone itself). ``BlockLayout.tensors`` names tensors that move between submodules
(Swin's bias table); ``BlockLayout.saved_buffers`` names the buffers the reference layout's
checkpoints hold that another layout recomputes (Swin's position index): they are written from their
formula when a model of another layout saves, and checked against it when such a model loads.

The translation must be one-to-one on the names given, both ways; anything else is an error, never a
silently mixed-up checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from surgery.core.anatomy import Anatomy, Layout
from surgery.errors import UnsupportedModelError

CONTAINER_ROLES = frozenset({"encoder"})


@dataclasses.dataclass(frozen=True)
class _Entry:
    key: tuple[str, int]  # (role or tensor alias, pattern index)
    glob: str
    regex: re.Pattern[str]
    exact: bool


def _entries(layout: Layout) -> list[_Entry]:
    """The layout's naming entries, most specific first (tensor aliases, then longer role patterns)."""
    entries = []
    block = layout.roles.get("block", ())
    if layout.block is not None and len(block) == 1:
        for alias, path in layout.block.tensors.items():
            glob = f"{block[0]}.{path}"
            entries.append(_Entry((f"tensor:{alias}", 0), glob, re.compile(_regex(glob) + "$"), True))
    for role, patterns in layout.roles.items():
        for index, glob in enumerate(patterns):
            if role in CONTAINER_ROLES:  # the module itself, not what is under it
                entries.append(_Entry((role, index), glob, re.compile(_regex(glob) + "$"), True))
            else:
                entries.append(_Entry((role, index), glob, re.compile(_regex(glob) + r"(\..+)?$"), False))
    entries.sort(key=lambda e: (not e.exact, -e.glob.count("."), -len(e.glob)))
    return entries


def _regex(glob: str) -> str:
    return "^" + re.escape(glob).replace(r"\*", r"([^.]+)")


def _fill(glob: str, groups: tuple[str, ...]) -> str:
    pieces = glob.split("*")
    if len(pieces) - 1 != len(groups):
        raise ValueError(glob)
    return pieces[0] + "".join(g + p for g, p in zip(groups, pieces[1:]))


@dataclasses.dataclass(frozen=True)
class Renamer:
    """Names of ``source`` layout to names of ``target`` layout (same anatomy)."""

    anatomy: Anatomy
    source: Layout
    target: Layout

    @functools.cached_property
    def _plan(self) -> tuple[list[_Entry], dict[tuple[str, int], _Entry]]:
        return _entries(self.source), {e.key: e for e in _entries(self.target)}

    def name(self, name: str) -> str:
        if self.source is self.target:
            return name
        entries, targets = self._plan
        for entry in entries:
            found = entry.regex.match(name)
            if found is None:
                continue
            target = targets.get(entry.key)
            if target is None:
                raise UnsupportedModelError(
                    f"{name!r} ({entry.key[0]} in the {self.anatomy.model_type} layout '{self.source.name}') has no "
                    f"counterpart in the layout '{self.target.name}'."
                )
            indices = found.groups()[:-1] if not entry.exact else found.groups()
            return _fill(target.glob, tuple(indices)) + ("" if entry.exact else (found.groups()[-1] or ""))
        return name

    def names(self, names: Iterable[str]) -> dict[str, str]:
        """``{name: translated}``; an error unless the translation is one-to-one and goes back."""
        names = list(names)
        mapped = {name: self.name(name) for name in names}
        if self.source is self.target:
            return mapped
        back = Renamer(self.anatomy, self.target, self.source)
        seen: dict[str, str] = {}
        for name, new in mapped.items():
            if new in seen or back.name(new) != name:
                other = seen.get(new, back.name(new))
                raise UnsupportedModelError(
                    f"the {self.anatomy.model_type} layouts '{self.source.name}' and '{self.target.name}' do not name "
                    f"{name!r} one-to-one (it becomes {new!r}, as does {other!r}); this checkpoint cannot cross them."
                )
            seen[new] = name
        return mapped


def renamer(anatomy: Anatomy | None, model: nn.Module, *, to_reference: bool) -> Renamer | None:
    """The renamer between ``model``'s layout and the reference layout (None: no anatomy, or the same)."""
    if anatomy is None:
        return None
    reference, layout = anatomy.all_layouts()[0], anatomy.layout_of(model)
    if layout.name == reference.name:
        return None
    return Renamer(anatomy, layout, reference) if to_reference else Renamer(anatomy, reference, layout)


def to_reference_state(
    anatomy: Anatomy | None, model: nn.Module, state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``state`` (``model``'s names) in reference names, with the reference layout's saved buffers
    that ``model``'s layout recomputes instead of saving."""
    forward = renamer(anatomy, model, to_reference=True)
    if forward is None:
        return dict(state)
    mapped = forward.names(state)
    out = {mapped[key]: value for key, value in state.items()}
    for key, value in derived_buffers(anatomy, out).items():
        out.setdefault(key, value)
    return out


def derived_buffers(anatomy: Anatomy, reference_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference layout's saved buffers, computed by their formulas from ``reference_state``
    (reference names; a lazy mapping is read only where a formula looks), for every block in it."""
    reference = anatomy.all_layouts()[0]
    block = reference.roles.get("block", ())
    if reference.block is None or not reference.block.saved_buffers or len(block) != 1:
        return {}
    prefix = re.compile(_regex(block[0]) + r"\.")
    starts = {found.group(0) for found in map(prefix.match, reference_state) if found}
    out = {}
    for start in sorted(starts):
        view = _BlockView(reference_state, start)
        for path, formula in reference.block.saved_buffers.items():
            value = formula(view)
            if value is not None:
                out[start + path] = value
    return out


class _BlockView(Mapping):
    """One block's tensors of a state mapping, by their paths relative to the block."""

    def __init__(self, state: Mapping[str, torch.Tensor], start: str) -> None:
        self._state, self._start = state, start

    def __getitem__(self, path: str) -> torch.Tensor:
        return self._state[self._start + path]

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self._start + path in self._state

    def __iter__(self):
        return (key[len(self._start) :] for key in self._state if key.startswith(self._start))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def reference_to_model(anatomy: Anatomy | None, model: nn.Module, reference_names: Iterable[str]) -> dict[str, str]:
    """``{reference name: model name}`` for the names a reference checkpoint holds."""
    backward = renamer(anatomy, model, to_reference=False)
    names = list(reference_names)
    return {name: name for name in names} if backward is None else backward.names(names)
