"""Round tables and plots, read from the store alone (so they work on any finished or live run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seal.store import Store

HEADER = ("round", "contexts", "edits", "mean reward", "max reward", "baseline", "kept",
          "sample s", "adapt s", "improve s")


def summaries(run: Store) -> list[dict[str, Any]]:
    out = []
    r = 0
    while run.exists(f"round-{r}/summary.json"):
        out.append(run.read_json(f"round-{r}/summary.json"))
        r += 1
    return out


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
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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
