"""``write_report``: cells -> ``results.csv``, ``report.md``, plots and a
self-contained ``report.html`` (docs/architecture.md, "report").

One row per configuration (``harness.report.cells``: cells equal but for the seed; configurations
that share dataset, backbone, neck and classifier are labelled by the settings that differ,
or, with ``latest``, only the newest is shown): mIoU mean and std over its seeds, fwIoU,
pACC, head parameters (inference / training-only), GFLOPs, latency p50/p90, throughput and
peak memory at the smallest measured batch size, and the mIoU delta against its baseline
(``harness.report.cells.baseline``, named in the row) over the seeds both ran, with a 95% paired
bootstrap interval (``bootstrap_delta``); a delta whose interval excludes zero is marked
significant.
"""

from __future__ import annotations

import base64
import csv
import html
from dataclasses import dataclass
from pathlib import Path

from harness.logs import progress_logger
from harness.report.cells import Cell, configurations
from harness.report.diagnostics import diagnostic_figures, trunk_notes
from harness.report.figures import plots
from harness.report.predictions import prediction_panels
from harness.report.statistics import COLUMNS, RESAMPLES, summarise_configurations


@dataclass
class Section:
    """A part of the report after the table and plots: its anchor, title, what it shows, notes and pictures."""

    anchor: str
    title: str
    intro: str
    notes: list[str]
    images: dict[str, bytes]


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _markdown(name: str, rows: list[dict]) -> str:
    header = ["dataset", "backbone", "neck", "configuration", "seeds", "mIoU", "vs baseline", "baseline", "boundary IoU",
              "ECE", "fwIoU",
              "pACC", "head params (inference / training-only)", "GFLOPs", "p50 ms", "p90 ms", "images/s", "peak MB"]
    lines = [f"# {name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        miou = f"{_fmt(r['mIoU'])} ± {_fmt(r['mIoU_std'])}" if r["seeds"] > 1 else _fmt(r["mIoU"])
        delta = "" if r["delta_vs_softmax"] is None else f"{r['delta_vs_softmax']:+.2f}"
        if r["delta_ci_low"] is not None:
            delta += f" [{r['delta_ci_low']:+.2f}, {r['delta_ci_high']:+.2f}]" + ("*" if r["significant"] else "")
        base = "" if r["baseline"] is None else f"{r['baseline']} ({r['paired_seeds']} paired)"
        params = f"{_fmt(r['head_params_inference'], 0)} / {_fmt(r['head_params_training_only'], 0)}"
        cells = [r["dataset"], r["backbone"], r["neck"], r["configuration"], str(r["seeds"]), miou, delta, base,
                 _fmt(r["mBoundaryIoU"]), _fmt(r["ECE"]), _fmt(r["fwIoU"]), _fmt(r["pACC"]), params, _fmt(r["gflops"], 3), _fmt(r["latency_p50_ms"], 1),
                 _fmt(r["latency_p90_ms"], 1), _fmt(r["throughput_images_per_s"]), _fmt(r["peak_memory_mb"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "One row per configuration: cells equal in everything but the seed; a label in brackets gives the "
              "settings that tell configurations of one head apart. mIoU in percent (mean ± std over seeds); vs "
              "baseline: the mIoU delta against the named softmax configuration (same dataset and backbone, the same "
              "neck where there is one) over the seeds both ran, seed paired with seed, with its 95% paired bootstrap "
              f"interval over validation images (and seeds), {RESAMPLES} resamples; * marks an interval that "
              "excludes zero. Latency, throughput and memory at the smallest measured batch size; GFLOPs = 2 x GMACs "
              "per image.", ""]
    return "\n".join(lines)


def _figures(images: dict[str, bytes]) -> str:
    return "".join(f"<figure><img alt='{n}' src='data:image/png;base64,{base64.b64encode(b).decode()}'>"
                   f"<figcaption>{n}</figcaption></figure>" for n, b in images.items())


def _html(name: str, rows: list[dict], images: dict[str, bytes], sections: list[Section]) -> str:
    header = "".join(f"<th onclick='sortBy({i})'>{html.escape(c)}</th>" for i, c in enumerate(COLUMNS))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r[c], 3))}</td>" for c in COLUMNS) + "</tr>" for r in rows)
    figures = _figures(images)
    for section in sections:
        figures += (f"<h2 id='{section.anchor}'>{html.escape(section.title)}</h2><p>{html.escape(section.intro)}</p>"
                    + "".join(f"<p class='note'>{html.escape(n)}</p>" for n in section.notes)
                    + _figures(section.images))
    script = """function sortBy(i){const t=document.getElementById('results'),b=t.tBodies[0];
const rows=[...b.rows],asc=t.dataset.col==i?!(t.dataset.asc==='true'):true;t.dataset.col=i;t.dataset.asc=asc;
const v=r=>{const s=r.cells[i].textContent.replace(/,/g,'');const n=parseFloat(s);return isNaN(n)?s:n};
rows.sort((a,c)=>{const x=v(a),y=v(c);return (x>y?1:x<y?-1:0)*(asc?1:-1)});rows.forEach(r=>b.appendChild(r));}"""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}</title><style>"
            "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px}"
            "th{cursor:pointer;background:#eee}figure{display:inline-block}</style></head><body>"
            f"<h1>{html.escape(name)}</h1><table id='results'><thead><tr>{header}</tr></thead><tbody>{body}</tbody>"
            f"</table>{figures}<script>{script}</script></body></html>")


def write_report(name: str, cells: list[Cell], out: Path, tracking_uri: str | None = None,
                 latest: bool = False) -> list[Path]:
    """Write ``results.csv``, ``report.md``, the PNG plots and ``report.html`` into ``out``, with
    the shared trunks and the heads' diagnostics when cells have them and, with ``tracking_uri``
    (cells with ``run_id``s), the predictions section too; with
    ``latest``, only the newest configuration of each dataset x backbone x neck x classifier."""
    configs = configurations(cells, latest)
    progress_logger.info("report: %d cells in %d configurations; the table, with paired bootstrap intervals",
                         len(cells), len(configs))
    rows = summarise_configurations(configs)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "report.md").write_text(_markdown(name, rows))
    progress_logger.info("report: plots and the heads' diagnostics")
    images = plots(rows, configs)
    for file_name, data in images.items():
        (out / file_name).write_bytes(data)
    diagnostic_images, diagnostic_notes = diagnostic_figures(configs)
    predictions, prediction_notes = prediction_panels(configs, tracking_uri) if tracking_uri else ({}, [])
    sections = [Section("trunks", "Shared trunks", "Configurations whose cells start from one trained backbone "
                        "and neck (a grid's trunk section).", trunk_notes(configs), {}),
                Section("diagnostics", "Head diagnostics", "What each head shows about itself, averaged over "
                        "validation images and seeds (PixelClassifier.diagnostics).", diagnostic_notes,
                        diagnostic_images),
                Section("predictions", "Predictions", "The same validation images (a fixed, seeded draw) for every "
                        "head on one backbone, with each image's mIoU under its panel.", prediction_notes, predictions)]
    sections = [section for section in sections if section.notes or section.images]
    with open(out / "report.md", "a") as handle:
        for section in sections:
            for file_name, data in section.images.items():
                (out / file_name).write_bytes(data)
            handle.write(f"\n## {section.title}\n\n{section.intro}\n\n" + "".join(f"- {n}\n" for n in section.notes)
                         + "".join(f"![{n}]({n})\n" for n in section.images))
    (out / "report.html").write_text(_html(name, rows, images, sections))
    progress_logger.info("report: written to %s", out)
    return [out / "results.csv", out / "report.md", *(out / n for n in images),
            *(out / n for section in sections for n in section.images), out / "report.html"]
