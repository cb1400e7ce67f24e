"""Parity plots (predicted vs reference) for energy per atom, forces and stress."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# quantity → (axis label, unit)
_PANELS = {
    "energy": ("energy per atom", "eV/atom"),
    "forces": ("force components", "eV/Å"),
    "stress": ("stress components", "eV/Å³"),
}


def parity_plot(
    reference: dict[str, np.ndarray],
    predicted: dict[str, np.ndarray],
    path: str | Path,
    title: str = "",
) -> Path:
    """One panel per quantity present in both dicts (flat arrays, units in `_PANELS`);
    writes a PNG and returns its path. A bare `Figure` renders with the Agg canvas: no display,
    no pyplot, and the global matplotlib backend is left alone."""
    from matplotlib.figure import Figure

    quantities = [q for q in _PANELS if len(reference.get(q, ())) and len(predicted.get(q, ()))]
    figure = Figure(figsize=(4.2 * max(len(quantities), 1), 4.0), layout="constrained")
    axes = figure.subplots(1, max(len(quantities), 1), squeeze=False)[0]
    for ax, quantity in zip(axes, quantities, strict=False):
        label, unit = _PANELS[quantity]
        x, y = np.asarray(reference[quantity]).ravel(), np.asarray(predicted[quantity]).ravel()
        low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        pad = 0.05 * (high - low or 1.0)
        ax.plot([low - pad, high + pad], [low - pad, high + pad], color="0.6", lw=1, zorder=0)
        ax.scatter(x, y, s=4, alpha=0.5, linewidths=0)
        mae = float(np.mean(np.abs(y - x)))
        ax.set_title(f"{label}\nMAE {1000 * mae:.3g} m{unit}")
        ax.set_xlabel(f"reference ({unit})")
        ax.set_ylabel(f"predicted ({unit})")
        ax.set_xlim(low - pad, high + pad)
        ax.set_ylim(low - pad, high + pad)
        ax.set_aspect("equal")
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
