"""ARC grids: validation, the text format models read and write, and a strict answer parser.

A grid is a list of rows of ints 0-9 (colours), every row the same width, 1-30 rows and columns
(ARC-AGI's limits). In prompts a grid is one line per row, cells separated by single spaces:

    0 7 7
    7 7 7

Why spaces: Llama-3's tokenizer merges up to three adjacent digits into one token, so "077" and
"0 7 7" tokenize differently and the model would have to learn digit merges; with spaces every
cell is one digit token, whatever the tokenizer (byte-level tiny tokenizers included).

`parse_grid` is the only way model output becomes a grid. It never raises and never evaluates
anything: malformed text gives `(None, reason)` and the answer counts as wrong.
"""

from __future__ import annotations

import re
from typing import Any

Grid = list[list[int]]

MAX_SIDE = 30  # ARC-AGI grids are at most 30 x 30
_ROW = re.compile(r"[0-9]( [0-9])*")


def check_grid(grid: Any, max_side: int = MAX_SIDE) -> str:
    """'' when `grid` is a valid grid, else a one-line reason (used for data files and parsing)."""
    if not isinstance(grid, list) or not grid:
        return "a grid must be a non-empty list of rows"
    if len(grid) > max_side:
        return f"a grid has at most {max_side} rows (got {len(grid)})"
    width = None
    for i, row in enumerate(grid):
        if not isinstance(row, list) or not row:
            return f"row {i} must be a non-empty list of cells"
        if width is None:
            width = len(row)
        if len(row) != width:
            return f"row {i} has {len(row)} cells, row 0 has {width}: rows must have equal widths"
        if len(row) > max_side:
            return f"a grid has at most {max_side} columns (got {len(row)})"
        for cell in row:
            # bool is an int subclass: reject it explicitly, a colour is a plain int 0-9
            if isinstance(cell, bool) or not isinstance(cell, int) or not 0 <= cell <= 9:
                return f"row {i} has a cell {cell!r}: cells are integers 0-9"
    return ""


def grid_to_text(grid: Grid) -> str:
    return "\n".join(" ".join(str(c) for c in row) for row in grid)


def parse_grid(text: str, max_side: int = MAX_SIDE) -> tuple[Grid | None, str]:
    """Model output -> (grid, '') or (None, reason). Never raises.

    The answer is the first block of non-empty lines (leading blank lines skipped); a blank line
    ends it, so a model that goes on to invent another "Input:" block after its answer has still
    answered. Every line of the block must be digits 0-9 separated by single spaces, all lines the
    same width: no brackets, commas, labels or trailing text.
    """
    if not isinstance(text, str):
        return None, "output is not text"
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    block: list[str] = []
    for line in lines:
        if not line.strip():
            break
        block.append(line.strip())
    if not block:
        return None, "empty answer"
    if len(block) > max_side:
        return None, f"answer has {len(block)} rows, more than {max_side}"
    grid: Grid = []
    for i, line in enumerate(block):
        if not _ROW.fullmatch(line):
            return None, f"answer line {i + 1} is not digits 0-9 separated by single spaces: {line[:40]!r}"
        grid.append([int(c) for c in line.split(" ")])
    reason = check_grid(grid, max_side)
    return (grid, "") if not reason else (None, f"answer: {reason}")


def cells(grid: Grid) -> int:
    return len(grid) * len(grid[0])


def side(grid: Grid) -> int:
    return max(len(grid), len(grid[0]))
