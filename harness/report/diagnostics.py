"""What the report says beyond the table: which configurations share a trunk (``trunk_notes``), and
each head's own diagnostics (``diagnostic_figures``): its scalars in words, each per-class vector
as bars and each matrix as a heat map (ProtoSeg's prototype usage, with collapsed classes flagged;
SSA's prototype shift; ECENet's class-embedding cosines)."""

from __future__ import annotations

import warnings
from collections import defaultdict

import numpy as np

from harness.evaluation import DIAGNOSTIC_PREFIX
from harness.figures import png_bytes, pyplot
from harness.report.cells import Configuration

COLLAPSE_SHARE = 0.9  # a class whose closest-prototype share reaches this has collapsed onto one prototype


def collapsed_classes(usage: list[list[float | None]], threshold: float = COLLAPSE_SHARE) -> list[int]:
    """The class ids (rows of ProtoSeg's ``prototype_usage``) where one of several prototypes
    takes at least ``threshold`` of the class's pixels; rows with no pixels are left out."""
    rows = np.array(usage, dtype=float)
    if rows.ndim != 2 or rows.shape[1] < 2:
        return []
    present = ~np.isnan(rows).all(axis=1)
    return [int(c) for c in np.flatnonzero(present & (np.nan_to_num(rows, nan=0.0).max(axis=1) >= threshold))]


def trunk_notes(configs: list[Configuration]) -> list[str]:
    """One line per trunk that several configurations start from (their cells' ``trunk`` tag)."""
    shared = defaultdict(list)
    for config in configs:
        for cell in config.cells.values():
            if "trunk" in cell.tags:
                frozen = config.settings.get("trunk.train", "False") == "False"
                shared[(cell.tags["trunk"], frozen)].append(f"{config.label}@{config.backbone}")
                break
    return [f"Trunk {digest} ({'frozen' if frozen else 'fine-tuned'}): {', '.join(names)}. "
            + ("They train their heads on the same fixed features: deltas between them hold no backbone "
               "run-to-run noise." if frozen else "They start from the same trained backbone and neck.")
            for (digest, frozen), names in shared.items()]


def _mean_arrays(config: Configuration) -> dict[str, np.ndarray]:
    """Each diagnostic array of ``config``, averaged over its seeds (NaN-aware)."""
    arrays = defaultdict(list)
    for cell in config.cells.values():
        for name, value in (cell.diagnostics or {}).items():
            arrays[name].append(np.array(value, dtype=float))
    with warnings.catch_warnings():  # an entry NaN in every seed stays NaN ("mean of empty slice")
        warnings.simplefilter("ignore", RuntimeWarning)
        return {name: np.nanmean(np.stack(values), axis=0) for name, values in arrays.items()
                if len({v.shape for v in values}) == 1}


def diagnostic_figures(configs: list[Configuration]) -> tuple[dict[str, bytes], list[str]]:
    """(``diagnostics_<name>.png`` per diagnostic array, one panel or bar series per configuration;
    one line of scalars per configuration with a collapse warning where ProtoSeg's usage shows one)."""
    notes, panels = [], defaultdict(list)
    for config in configs:
        scalars = {k[len(DIAGNOSTIC_PREFIX):]: config.mean(k) for cell in config.cells.values()
                   for k in cell.metrics if k.startswith(DIAGNOSTIC_PREFIX)}
        arrays = _mean_arrays(config)
        if not scalars and not arrays:
            continue
        name = f"{config.label}@{config.backbone}"
        line = f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(scalars.items()) if v is not None)
        if "prototype_usage" in arrays:
            collapsed = collapsed_classes(arrays["prototype_usage"].tolist())
            if collapsed:
                line += (f"; COLLAPSED in {len(collapsed)} of {len(arrays['prototype_usage'])} classes "
                         f"(one prototype takes >= {COLLAPSE_SHARE:.0%} of their pixels: class ids "
                         f"{', '.join(map(str, collapsed))})")
        notes.append(line)
        for key, value in arrays.items():
            panels[key].append((name, value))
    plt = pyplot()
    images = {}
    for key, entries in panels.items():
        if entries[0][1].ndim == 2:
            figure, axes = plt.subplots(1, len(entries), figsize=(3.6 * len(entries) + 0.8, 3.4), squeeze=False)
            for ax, (name, value) in zip(axes[0], entries):
                image = ax.imshow(value, aspect="auto", cmap="viridis")
                ax.set(title=name, xlabel="prototype" if key == "prototype_usage" else "class id", ylabel="class id")
                ax.title.set_fontsize(8)
                figure.colorbar(image, ax=ax)
        else:
            figure, ax = plt.subplots(figsize=(6, 3.4))
            width = 0.8 / len(entries)
            for i, (name, value) in enumerate(entries):
                ax.bar(np.arange(len(value)) + i * width, np.nan_to_num(value), width, label=name)
            ax.set(xlabel="class id", ylabel=key)
            ax.legend(fontsize=7)
        figure.suptitle(key, fontsize=9)
        images[f"diagnostics_{key}.png"] = png_bytes(figure)
    return images, notes
