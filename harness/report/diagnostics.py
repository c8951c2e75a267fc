"""What the report says beyond the table: which configurations share a trunk (``trunk_notes``), and
each head's own diagnostics (``diagnostic_figures``): its scalars in words, each per-class vector
as bars and each matrix as a heat map (ProtoSeg's prototype usage, with collapsed classes flagged;
SSA's prototype shift; ECENet's class-embedding cosines). A matrix of more than ``HEATMAP_ROWS``
classes shows the ``HEATMAP_ROWS`` that stand out most (``top_rows``), named, so it stays readable
at ADE20K's 150."""

from __future__ import annotations

import warnings
from collections import defaultdict

import numpy as np

from harness.data import label_space
from harness.errors import InputError
from harness.evaluation import DIAGNOSTIC_PREFIX
from harness.figures import png_bytes, pyplot, short_name
from harness.report.cells import Configuration

COLLAPSE_SHARE = 0.9  # a class whose closest-prototype share reaches this has collapsed onto one prototype
HEATMAP_ROWS = 30  # classes a diagnostic heat map shows at most


def collapsed_classes(usage: list[list[float | None]], threshold: float = COLLAPSE_SHARE) -> list[int]:
    """The class ids (rows of ProtoSeg's ``prototype_usage``) where one of several prototypes
    takes at least ``threshold`` of the class's pixels; rows with no pixels are left out."""
    rows = np.array(usage, dtype=float)
    if rows.ndim != 2 or rows.shape[1] < 2:
        return []
    present = ~np.isnan(rows).all(axis=1)
    return [int(c) for c in np.flatnonzero(present & (np.nan_to_num(rows, nan=0.0).max(axis=1) >= threshold))]


def top_rows(matrix: np.ndarray, limit: int = HEATMAP_ROWS) -> np.ndarray:
    """The indices of the ``limit`` rows of ``matrix`` with the largest entry, largest first
    (a square class x class matrix: off its diagonal, e.g. the most alike class embeddings; a
    class x prototype matrix: the classes closest to collapse); rows without a value last."""
    values = np.array(matrix, dtype=float)
    if values.shape[0] == values.shape[1]:
        np.fill_diagonal(values, np.nan)
    with warnings.catch_warnings():  # an all-NaN row: "All-NaN slice encountered"
        warnings.simplefilter("ignore", RuntimeWarning)
        score = np.nan_to_num(np.nanmax(values, axis=1), nan=-np.inf)
    return np.argsort(-score, kind="stable")[:limit]


def _class_names(dataset: str, count: int) -> list[str]:
    """The dataset's class names (``short_name``), or the ids when it is not registered here or
    has another count."""
    try:
        names = label_space(dataset)[0]
    except InputError:
        names = []
    return [short_name(n) for n in names] if len(names) == count else [str(c) for c in range(count)]


def _heatmap(ax, figure, value: np.ndarray, names: list[str], key: str, title: str) -> None:
    """``value`` [classes, columns] as a heat map, at most ``HEATMAP_ROWS`` rows (``top_rows``),
    each named; a square class x class matrix keeps the same classes as columns, its diagonal blank."""
    square = value.shape[0] == value.shape[1]
    rows = top_rows(value) if len(value) > HEATMAP_ROWS else np.arange(len(value))
    shown = value[np.ix_(rows, rows)] if square else value[rows]
    if square:
        shown = np.where(np.eye(len(rows), dtype=bool), np.nan, shown)
    image = ax.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest")
    labels, fontsize = [names[r] for r in rows], 5 if len(rows) > 15 else 7
    ax.set_yticks(range(len(rows)), labels, fontsize=fontsize)
    if square:
        ax.set_xticks(range(len(rows)), labels, fontsize=fontsize, rotation=90)
    ax.set_xlabel("class" if square else ("prototype" if key == "prototype_usage" else "column"), fontsize=7)
    chosen = f"; {len(rows)} of {len(value)} classes, largest first" if len(rows) < len(value) else ""
    ax.set_title(title + chosen, fontsize=7)
    figure.colorbar(image, ax=ax)


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
    notes, panels, names = [], defaultdict(list), {}
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
            names[key, name] = _class_names(config.dataset, len(value))
    plt = pyplot()
    images = {}
    for key, entries in panels.items():
        if entries[0][1].ndim == 2:
            height = 1.2 + 0.11 * min(HEATMAP_ROWS, max(len(value) for _, value in entries))
            figure, axes = plt.subplots(1, len(entries), figsize=(4.2 * len(entries) + 0.8, max(3.4, height)),
                                        squeeze=False, layout="constrained")
            for ax, (name, value) in zip(axes[0], entries):
                _heatmap(ax, figure, value, names[key, name], key, name)
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
