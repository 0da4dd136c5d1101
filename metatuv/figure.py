"""One way to make a matplotlib figure for files: ``Figure`` + Agg canvas, no pyplot state (safe on any thread)."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def figure(size: tuple[float, float], **kwargs) -> Figure:
    """A ``Figure`` of ``size`` inches drawing to files only (``fig.savefig``); kwargs go to ``Figure``."""
    fig = Figure(figsize=size, **kwargs)
    FigureCanvasAgg(fig)
    return fig
