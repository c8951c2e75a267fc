"""The papers' grid specs: each dry-runs (cells and resources listed, nothing run) and every
case of its reference file selects cells the spec has."""

from pathlib import Path

import pytest

from harness.cli import main
from harness.grid import expand, load_grid
from harness.reference import load_reference
from harness.run import cell_tags

ROOT = Path(__file__).resolve().parents[1]
_SPECS = sorted((ROOT / "jobs" / "papers").glob("*.yaml"))


def test_there_is_a_spec_per_paper_table():
    assert [p.stem for p in _SPECS] == ["ecenet_table1_ade20k", "protoseg_table1_ade20k", "protoseg_table2_cityscapes",
                                        "ssa_table2"]


@pytest.mark.parametrize("spec", _SPECS, ids=lambda p: p.stem)
def test_dry_run_lists_every_cell_and_the_reference_selects_them(spec, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["grid", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    cells = expand(load_grid(spec))
    assert f"{len(cells)} cells; per cell 8 worker(s) x 7 CPU, 1 GPU (training)" in out  # the papers' 8 GPUs
    assert all(f"{c.model.classifier}@{c.model.backbone}/{c.model.neck}" in out for c in cells)
    assert not (tmp_path / "mlflow.db").exists()  # a dry run touches no store
    if spec.name.startswith("ecenet"):  # ECENet on the backbone's stages, its baselines Table 1's models
        necks = {(c.model.classifier, c.model.backbone): (c.model.neck, c.model.embed_dim) for c in cells}
        assert necks == {("ece", b): ("stages", 256) for b in ("resnet101_os8", "swin_b", "swin_l")} | {
            ("softmax", "resnet101_os8"): ("deeplabv3plus", 512), ("softmax", "swin_b"): ("upernet", 512),
            ("softmax", "swin_l"): ("upernet", 512)}
    else:  # ProtoSeg's and SSA's rows: the papers' decoders
        papers = {"resnet101_os8": "fcn", "swin_b": "upernet", "mit_b4": "segformer",
                  "hrnetv2_w48": "ocr" if spec.name.startswith("ssa") else "hrnet_fcn"}  # SSA's HRNet rows: OCRNet
        assert {c.model.backbone: c.model.neck for c in cells} == {b: papers[b] for b in {c.model.backbone for c in cells}}
    tags = [cell_tags(c) for c in cells]
    reference = load_reference(ROOT / "jobs" / "reference" / "papers" / spec.name)
    assert reference.cases
    for case in reference.cases:
        assert any(all(t.get(k) == str(v) for k, v in case.select.items()) for t in tags), case.select
