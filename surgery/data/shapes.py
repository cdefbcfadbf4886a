"""The proving ground: count the plus signs in the left half, among look-alikes and decoys (generated, no downloads).

Each image is 64x64 RGB on a dark noisy background, cut into an 8x8 grid of 8-pixel cells (a
patch-8 ViT's 64 patch tokens). Every cell holds one 5x5 glyph, at a random offset inside the cell
(0-2 pixels, so neighbouring glyphs never touch), of a random brightness:
- 0 to 9 *plus signs* in the left half (four columns of cells): the label is how many;
- 0 to 9 plus signs in the right half: decoys, the same glyph in the wrong place;
- distractors in all the other cells, drawn from three look-alikes of the same size and ink (an x,
  a ring, a T): a plus and an x differ only in where their 9 pixels sit.
So the label depends on fine detail *and on where it is*, and no token is background: dropping a
plus, or averaging a left plus with a right one or with a look-alike, changes the count. The label
is exact by construction. Measured on the shipped model (docs/proving-ground.md): pruning and Token
Transforming lose accuracy below half the FLOPs; ToMe, which merges the most similar tokens, does
not, down to a quarter.

Every image is generated on its own from ``(seed, split, index)`` through NumPy's ``default_rng``,
so a split is the same bytes on every machine and any slice of it can be generated alone. Splits:
train 30,000, validation 2,000, test 5,000 (seed 0).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from surgery.data.digits import Split

NAME = "shapes"
LABELS = [str(count) for count in range(10)]
SIZE, CELL, GLYPH = 64, 8, 5
GRID = SIZE // CELL
MAX_TARGETS = 9
DISTRACTORS = (GRID * GRID - 2 * MAX_TARGETS, GRID * GRID)  # inclusive: every cell without a plus sign
BACKGROUND = (10, 50)  # per channel and pixel, exclusive upper bound
INK = (170, 256)  # per glyph, grey
SPLITS = {"train": 30_000, "validation": 2_000, "test": 5_000}
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


def _glyphs() -> dict[str, np.ndarray]:
    blank = np.zeros((GLYPH, GLYPH), bool)
    plus = blank.copy()
    plus[GLYPH // 2, :] = plus[:, GLYPH // 2] = True
    cross = np.eye(GLYPH, dtype=bool) | np.eye(GLYPH, dtype=bool)[::-1]
    ring = np.ones((GLYPH, GLYPH), bool)
    ring[1:-1, 1:-1] = False
    tee = blank.copy()
    tee[0, :] = tee[:, GLYPH // 2] = True
    return {"plus": plus, "x": cross, "ring": ring, "T": tee}


GLYPHS = _glyphs()
_KINDS = list(GLYPHS)  # the target first, then the distractors


def shape_image(index: int, split: str = "test", seed: int = 0) -> tuple[np.ndarray, int]:
    """Image ``index`` of ``split`` as a (64, 64, 3) uint8 array, and its label (the plus signs in the left half)."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"the shapes task has the splits {', '.join(_SPLIT_IDS)}, not {split!r}")
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    image = rng.integers(*BACKGROUND, size=(SIZE, SIZE, 3), dtype=np.uint8)
    targets, decoys = (int(n) for n in rng.integers(0, MAX_TARGETS + 1, size=2))
    half = GRID * GRID // 2  # cells per half, numbered row by row within the half
    left, right = rng.permutation(half), rng.permutation(half) + half
    cells = np.concatenate([left[:targets], right[:decoys], left[targets:], right[decoys:]])  # plus signs first
    kinds = np.concatenate(
        [np.zeros(targets + decoys, np.int64), rng.integers(1, len(_KINDS), len(cells) - targets - decoys)]
    )
    # offsets 0..2 leave at least one background pixel between glyphs of neighbouring cells
    offsets = rng.integers(0, CELL - GLYPH, size=(len(cells), 2))
    inks = rng.integers(*INK, size=len(cells))
    for cell, kind, (dy, dx), ink in zip(cells, kinds, offsets, inks):
        side, within = divmod(int(cell), half)
        row, column = divmod(within, GRID // 2)
        y, x = row * CELL + int(dy), (column + side * GRID // 2) * CELL + int(dx)
        image[y : y + GLYPH, x : x + GLYPH][GLYPHS[_KINDS[kind]]] = ink
    return image, targets


def shape_arrays(
    split: str = "test", start: int = 0, stop: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``start:stop`` of ``split`` as one (N, 64, 64, 3) uint8 array, and their labels."""
    stop = SPLITS[split] if stop is None else stop
    if not 0 <= start <= stop:
        raise ValueError(f"shapes: need 0 <= start <= stop, got {start} and {stop}")
    made = [shape_image(i, split, seed) for i in range(start, stop)]
    images = np.stack([m[0] for m in made]) if made else np.zeros((0, SIZE, SIZE, 3), np.uint8)
    return images, np.array([m[1] for m in made], dtype=np.int64)


def shapes_split(split: str = "test", limit: int | None = None, seed: int = 0) -> Split:
    """``split`` as PIL images and labels (the first ``limit`` images when given)."""
    images, labels = shape_arrays(split, 0, limit, seed)
    return Split([Image.fromarray(image, mode="RGB") for image in images], labels)


def describe() -> str:
    return (
        f"shapes: count the plus signs in the left half (0-{MAX_TARGETS}), with 0-{MAX_TARGETS} decoy plus signs "
        f"in the right half and look-alike glyphs (x, ring, T) in every other cell, {SIZE}x{SIZE} px, generated with seed 0"
    )
