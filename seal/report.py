"""Text tables and plots: the round table of `seal run` and `seal report` (read from the store
alone, so it works on any finished or live run), and the helpers every table and figure uses."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HEADER = ("round", "contexts", "edits", "mean reward", "max reward", "baseline", "kept",
          "sample s", "adapt s", "improve s")


# Student's t, two-sided 95%, by degrees of freedom; between rows the lower row's (wider) value,
# beyond 120 the normal's 1.96. No scipy needed.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 24: 2.064, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its 95% confidence interval (Student's t over the values,
    taken as independent draws; with one value the interval is the value itself)."""
    mean = statistics.fmean(values)
    n = len(values)
    if n < 2:
        return mean, mean, mean
    df = n - 1
    t = _T95[max(k for k in _T95 if k <= df)] if df <= 120 else 1.96
    half = t * statistics.stdev(values) / n ** 0.5
    return mean, mean - half, mean + half


def text_table(cells: Sequence[Sequence[str]], left: int = 0) -> str:
    """Rows of cells as aligned text: a rule under the first (header) row, each column as wide as
    its widest cell, the first `left` columns left-aligned and the rest right-aligned."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def round_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table, one line per finished round."""
    cells = [HEADER] + [
        (
            str(s["round"]), str(s["contexts"]), str(s["candidates"]),
            f"{s['mean_reward']:.3f}", f"{s['max_reward']:.3f}", f"{s['mean_baseline']:.3f}",
            str(s["kept"]), f"{s['seconds']['sample']:.1f}", f"{s['seconds']['adapt']:.1f}",
            f"{s['seconds']['improve']:.1f}",
        )
        for s in rows
    ]
    return text_table(cells)


def plot_rewards(rows: list[dict[str, Any]], out: str | Path) -> Path:
    """PNG of mean/max reward and the un-adapted baseline per round."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    rounds = [s["round"] for s in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rounds, [s["mean_reward"] for s in rows], marker="o", label="mean reward")
    ax.plot(rounds, [s["max_reward"] for s in rows], marker="^", label="max reward")
    ax.plot(rounds, [s["mean_baseline"] for s in rows], linestyle="--", label="un-adapted baseline")
    ax.set_xlabel("ReSTEM round")
    ax.set_ylabel("reward (question accuracy)")
    ax.set_xticks(rounds)
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, out)


def save_figure(fig: Any, out: str | Path) -> Path:
    """Write a matplotlib figure as PNG (parent folders created) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
