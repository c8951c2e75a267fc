"""Figures as PNG bytes: matplotlib (a costly import) loaded in this one place, with the Agg backend
so no display is needed, and every figure saved and closed the same way."""

from __future__ import annotations

import io


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colormap(name: str):
    """matplotlib's colour map ``name``."""
    pyplot()
    from matplotlib import colormaps

    return colormaps[name]


def short_name(class_name: str) -> str:
    """A class's name as a figure labels it: the first of its synonyms ("painting" for ADE20K's
    "painting, picture")."""
    return class_name.split(",")[0].strip()


def legend_patch(color, label: str):
    """A legend entry: a swatch of ``color`` (RGB in [0, 1]) named ``label``."""
    pyplot()
    from matplotlib.patches import Patch

    return Patch(color=color, label=label)


def png_bytes(figure, dpi: int = 110) -> bytes:
    """``figure`` as PNG bytes (tight bounding box); the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(figure)
    return buffer.getvalue()
