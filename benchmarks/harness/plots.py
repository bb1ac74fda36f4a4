"""The benchmarks' bar charts: one panel per measure, groups along x, a bar per series."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path


def bar_panels(path: Path, title: str, groups: Sequence[str], series: Sequence[str],
               panels: Sequence[tuple[str, str]], value: Callable[[str, str, str], float | None],
               width: float = 15.0) -> None:
    """Write a PNG to ``path``: for each (key, axis label) in ``panels``, bars of
    ``value(group, series, key)`` (None draws nothing), grouped by ``groups``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.2))
    bar = 0.76 / max(1, len(series))
    for ax, (key, label) in zip(axes, panels):
        for n, name in enumerate(series):
            offset = (n - (len(series) - 1) / 2) * bar
            ax.bar([i + offset for i in range(len(groups))], [value(g, name, key) or 0 for g in groups], bar,
                   label=name)
        ax.set_xticks(range(len(groups)), [g.replace(", ", "\n") for g in groups], fontsize=8)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
