"""Invertible grid transforms: the augmentation families a self-edit picks, and voting views.

Every transform is a pair (forward, inverse). `forward` is injective on grids, and
`inverse(forward(g)) == g` for every grid g (tests/unit/test_arc.py checks this with
hypothesis). The geometric ones (the dihedral group: rotations, flips, transposes) are bijections
of all grids, so `inverse` accepts any grid; size and repeat transforms only reach some grids, and
their `inverse` returns None for a grid outside their image (e.g. a "2x up-scaled" grid whose
2x2 blocks are not uniform) instead of guessing.

Applied to a task, a transform maps every input and every output grid alike: if the task's rule
commutes with it (most ARC rules commute with rotations), the augmented task is another valid
instance of the same puzzle. Whether it helps for a given task is exactly what the self-edit
decides and ReSTEM learns.

The families follow the paper's self-edit tools: basic (rotations, flips, transposes), size
(up-scaling), chain (a basic transform then up-scaling) and repeat (tiling).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from seal.tasks.arc_grids import Grid


@dataclass(frozen=True)
class Transform:
    name: str
    forward: Callable[[Grid], Grid]
    inverse: Callable[[Grid], Grid | None]


# --- the dihedral group (bijections of all grids)


def _transpose(g: Grid) -> Grid:
    return [list(col) for col in zip(*g, strict=True)]


def _flip_h(g: Grid) -> Grid:  # mirror left <-> right
    return [row[::-1] for row in g]


def _flip_v(g: Grid) -> Grid:  # mirror top <-> bottom
    return [list(row) for row in g[::-1]]


def _rot90(g: Grid) -> Grid:  # clockwise
    return _flip_h(_transpose(g))


def _rot180(g: Grid) -> Grid:
    return _flip_v(_flip_h(g))


def _rot270(g: Grid) -> Grid:
    return _transpose(_flip_h(g))


def _anti_transpose(g: Grid) -> Grid:  # reflection in the anti-diagonal
    return _rot180(_transpose(g))


def _identity(g: Grid) -> Grid:
    return [list(row) for row in g]


# --- size: up-scaling by repeating cells; the inverse checks the blocks are uniform


def _upscale(g: Grid, fy: int, fx: int) -> Grid:
    return [[c for c in row for _ in range(fx)] for row in g for _ in range(fy)]


def _downscale(g: Grid, fy: int, fx: int) -> Grid | None:
    if len(g) % fy or len(g[0]) % fx:
        return None
    small = [row[::fx] for row in g[::fy]]
    return small if _upscale(small, fy, fx) == g else None


# --- repeat: tiling copies; the inverse checks every tile is the same


def _tile(g: Grid, ny: int, nx: int) -> Grid:
    return [list(row) * nx for _ in range(ny) for row in g]


def _untile(g: Grid, ny: int, nx: int) -> Grid | None:
    if len(g) % ny or len(g[0]) % nx:
        return None
    h, w = len(g) // ny, len(g[0]) // nx
    tile = [row[:w] for row in g[:h]]
    return tile if _tile(tile, ny, nx) == g else None


def _chain(first: Transform, then: Transform) -> Transform:
    """`then` after `first`; the inverse undoes `then` first and fails if either step does."""

    def inverse(g: Grid) -> Grid | None:
        mid = then.inverse(g)
        return None if mid is None else first.inverse(mid)

    return Transform(f"{first.name}+{then.name}", lambda g: then.forward(first.forward(g)), inverse)


def _self_inverse(name: str, f: Callable[[Grid], Grid]) -> Transform:
    return Transform(name, f, f)


IDENTITY = Transform("identity", _identity, _identity)

BASIC = [
    Transform("rot90", _rot90, _rot270),
    _self_inverse("rot180", _rot180),
    Transform("rot270", _rot270, _rot90),
    _self_inverse("flip_h", _flip_h),
    _self_inverse("flip_v", _flip_v),
    _self_inverse("transpose", _transpose),
    _self_inverse("anti_transpose", _anti_transpose),
]

UPSCALE2 = Transform("upscale2", lambda g: _upscale(g, 2, 2), lambda g: _downscale(g, 2, 2))
SIZE = [
    UPSCALE2,
    Transform("upscale_h2", lambda g: _upscale(g, 2, 1), lambda g: _downscale(g, 2, 1)),
    Transform("upscale_w2", lambda g: _upscale(g, 1, 2), lambda g: _downscale(g, 1, 2)),
]

CHAIN = [_chain(b, UPSCALE2) for b in BASIC]

REPEAT = [
    Transform("tile_1x2", lambda g: _tile(g, 1, 2), lambda g: _untile(g, 1, 2)),
    Transform("tile_2x1", lambda g: _tile(g, 2, 1), lambda g: _untile(g, 2, 1)),
    Transform("tile_2x2", lambda g: _tile(g, 2, 2), lambda g: _untile(g, 2, 2)),
]

# The families a self-edit may name, in the order their transforms are applied.
FAMILIES: dict[str, list[Transform]] = {"basic": BASIC, "size": SIZE, "chain": CHAIN, "repeat": REPEAT}

TRANSFORMS: dict[str, Transform] = {t.name: t for t in [IDENTITY, *BASIC, *SIZE, *CHAIN, *REPEAT]}

# Voting views must be bijections of every grid, so any answer can be mapped back.
DIHEDRAL = ["identity", *(t.name for t in BASIC)]


# --- colour permutations: background (0) stays, colours 1-9 are shuffled


def random_color_perm(rng: random.Random) -> list[int]:
    """perm[c] is the new colour of c; 0 maps to 0 because ARC treats black as background."""
    rest = list(range(1, 10))
    rng.shuffle(rest)
    return [0, *rest]


def invert_perm(perm: list[int]) -> list[int]:
    inv = [0] * len(perm)
    for c, p in enumerate(perm):
        inv[p] = c
    return inv


def recolor(g: Grid, perm: list[int]) -> Grid:
    return [[perm[c] for c in row] for row in g]
