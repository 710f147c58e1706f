"""The scale grid: the adapter scales a backend serves, and how a wanted scale lands on it.

One rule for the gate (which picks the scale a request gets) and the vLLM backend (which builds
one adapter variant per grid point): round UP, so an intervention is never weaker than the gate
asked for, and refuse a scale above the grid rather than serve it weaker. The gate used to clamp
such a scale to the grid's top while the backend refused it; refusing is the one behaviour that
keeps "never weaker", and policy validation keeps every policy's ``max_scale`` on the grid, so a
scale above it means a bug, which must fail loudly (a plain ValueError: INTERNAL, not the client's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Scales are decimals typed by operators (0.1 + 0.2 != 0.3 in binary): match within this.
GRID_TOLERANCE = 1e-9


def round_up_to_grid(scale: float, grid: Sequence[float]) -> float:
    """The smallest grid scale >= ``scale``; ValueError for an empty grid, a scale that is not
    a finite number > 0, or one above the grid's largest scale."""
    if not grid:
        raise ValueError("scale grid is empty")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale}")
    for point in sorted(grid):
        if point + GRID_TOLERANCE >= scale:
            return float(point)
    raise ValueError(f"scale {scale} exceeds the largest scale the backend serves ({max(grid)})")
