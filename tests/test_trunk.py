"""Head-only cells on a shared frozen trunk: weights from a file or a logged run, pinned by digest,
frozen through training, features computed once and read by every head; the heads' diagnostics."""

import dataclasses
import logging

import pytest
import torch
from gridtools import tiny_cell

from classifiers.protoseg import ProtoSegClassifier
from harness import engine
from harness.config import RunConfig, TrunkConfig, apply_overrides, config_hash
from harness.data import (
    AugmentConfig,
    DataParallelLayout,
    DatasetCatalog,
    SemSegMapper,
    build_test_loader,
    build_train_loader,
)
from harness.engine import attach_trunk, feature_batches, read_trunk, trunk_digest, trunk_features
from harness.errors import InputError
from harness.evaluation import diagnose, split_diagnostics
from harness.modeling import build_segmentor, state_dict_bytes
from harness.report import Cell, collapsed_classes, write_report
from harness.tracking import resolve_trunk

TINY = tiny_cell(iters=6) + ["train.threads=1"]
FIXED = ["data.scale_range=[1,1]", "data.hflip_prob=0", "data.color_jitter=0"]


@pytest.fixture(scope="module")
def trunk_file(tmp_path_factory):
    """A trained tiny softmax cell's weights.pt (the trunk) and its state dict."""
    folder = tmp_path_factory.mktemp("trunk")
    model = engine.run(apply_overrides(RunConfig(), TINY + ["model.classifier=softmax"])).model()
    path = folder / "weights.pt"
    path.write_bytes(state_dict_bytes(model))
    return path, model.state_dict()


def _trunk_entries(state):
    return {k: v for k, v in state.items() if k.startswith(("backbone.", "neck."))}


def test_a_frozen_trunk_stays_the_trunk_and_every_head_reads_its_features_once(trunk_file, tmp_path, caplog):
    path, trunk = trunk_file
    caplog.set_level(logging.INFO, logger="segheads")
    results = {}
    for classifier in ("protoseg", "ssa"):
        cfg = apply_overrides(RunConfig(), TINY + FIXED + [f"model.classifier={classifier}", f"trunk.checkpoint={path}"])
        trained = engine.run(cfg, storage=tmp_path / "runs")
        result, model = trained.result, trained.model()
        results[classifier] = result
        state = model.state_dict()
        # every backbone and neck tensor, BatchNorm statistics included, is the trunk's after training
        assert all(torch.equal(state[k], v) for k, v in _trunk_entries(trunk).items())
        assert model.auxiliary is None and not any(p.requires_grad for p in model.backbone.parameters())
        assert result.environment["engine"]["trunk_features"] == "cached"
        assert result.tags["trunk"] == str(path)
    cache = list((tmp_path / "runs" / "trunk-features").glob("*.pt"))
    assert len(cache) == 1  # one file for both heads
    said = [m for m in caplog.messages if "features of" in m]
    assert "computed, cached at" in said[0] and "read from" in said[1]
    assert results["protoseg"].tags["trunk"] == results["ssa"].tags["trunk"]


def test_cached_features_are_the_trunk_s_features_of_the_batches_the_loader_draws(trunk_file):
    path, _ = trunk_file
    cfg = apply_overrides(RunConfig(), TINY + FIXED + ["model.classifier=query", f"trunk.checkpoint={path}"])
    model = build_segmentor(cfg, 11, 255)
    attach_trunk(model, read_trunk(cfg.trunk)[0], cfg.trunk)
    records = DatasetCatalog.get("digits_sem_seg_train")[:40]
    mapper = SemSegMapper(11, 255, AugmentConfig((32, 32)))
    assert all(mapper.is_fixed(r) for r in records)
    features, _ = trunk_features(model, records, mapper, torch.device("cpu"), 16, None, "key")
    layout = DataParallelLayout(8, world_size=2, rank=1, accumulate=2)
    cached = feature_batches(features, 3, layout, start_step=5)
    loaded = build_train_loader(records, mapper, 8, 0, 3, layout, start_step=5)
    model.eval()
    for _ in range(3):
        batch, images = next(cached), next(loaded)
        assert torch.equal(batch["sem_seg"], images["sem_seg"])
        _, live = model.trunk(images["image"])
        assert torch.allclose(batch["features"].pixel, live.pixel, atol=1e-5)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(batch["features"].pyramid, live.pyramid))


@pytest.mark.parametrize("augment, fixed", [
    (AugmentConfig((32, 32)), True),
    (AugmentConfig((32, 32), hflip_prob=0.5), False),
    (AugmentConfig((32, 32), scale_range=(0.8, 1.25)), False),
    (AugmentConfig((32, 32), color_jitter=0.1), False),
    (AugmentConfig((32, 24)), False),  # the rescaled 32x32 image has 9 places for a 32x24 crop
])
def test_features_are_cached_only_when_augmentation_cannot_change_the_input(augment, fixed):
    record = DatasetCatalog.get("digits_sem_seg_train")[0]
    assert SemSegMapper(11, 255, augment).is_fixed(record) is fixed


def test_a_trunk_of_another_architecture_or_changed_weights_is_refused(trunk_file, tmp_path):
    path, _ = trunk_file
    wide = apply_overrides(RunConfig(), TINY + ["model.embed_dim=32", f"trunk.checkpoint={path}"])
    with pytest.raises(InputError, match=r"neck\..* is \[16.*this cell's is \[32"):
        attach_trunk(build_segmentor(wide, 11, 255), read_trunk(wide.trunk)[0], wide.trunk)
    copy = tmp_path / "trunk.pt"
    copy.write_bytes(path.read_bytes())
    pinned = resolve_trunk(TrunkConfig(checkpoint=str(copy)), None, None)
    assert pinned.digest == trunk_digest(copy.read_bytes()) and pinned.checkpoint == str(copy.resolve())
    state = torch.load(copy, weights_only=True)
    state["backbone.body.stem_0.weight"] = state["backbone.body.stem_0.weight"] + 1
    torch.save(state, copy)
    with pytest.raises(InputError, match="weights changed since the cell was set up"):
        read_trunk(pinned)
    (tmp_path / "empty.pt").write_bytes(state_dict_bytes(torch.nn.Linear(2, 2)))
    with pytest.raises(InputError, match="holds no backbone"):
        resolve_trunk(TrunkConfig(checkpoint=str(tmp_path / "empty.pt")), None, None)


def test_a_run_s_weights_become_a_pinned_file_and_the_digest_is_the_cell_s_identity(logged_cells, tmp_path):
    _, _, uri, _, _ = logged_cells
    trunk = resolve_trunk(TrunkConfig(run="checked/softmax@test_convnext-s1"), uri, tmp_path / "trunks")
    assert trunk.checkpoint == str(tmp_path / "trunks" / f"{trunk.digest}.pt")
    assert trunk_digest((tmp_path / "trunks" / f"{trunk.digest}.pt").read_bytes()) == trunk.digest
    with pytest.raises(InputError, match="no FINISHED run named 'nothing@here'"):
        resolve_trunk(TrunkConfig(run="checked/nothing@here"), uri, tmp_path)
    plain = apply_overrides(RunConfig(), TINY)
    on_trunk = dataclasses.replace(plain, trunk=trunk)
    moved = dataclasses.replace(on_trunk, trunk=dataclasses.replace(trunk, checkpoint="/elsewhere/trunk.pt"))
    other = dataclasses.replace(on_trunk, trunk=dataclasses.replace(trunk, digest="0" * 16))
    assert config_hash(plain) == config_hash(RunConfig(**{**vars(plain), "trunk": TrunkConfig()}))
    assert config_hash(on_trunk) == config_hash(moved) != config_hash(other) != config_hash(plain)


def test_a_collapsed_protoseg_head_is_flagged_by_its_usage_diagnostic(trunk_file, tmp_path):
    path, _ = trunk_file
    cfg = apply_overrides(RunConfig(), TINY + FIXED + ["model.classifier=protoseg", f"trunk.checkpoint={path}",
                                                      "model.classifier_kwargs={num_prototypes: 4}"])
    trained = engine.run(cfg)
    result, model = trained.result, trained.model()
    usage = result.diagnostics["prototype_usage"]
    assert len(usage) == 11 and len(usage[0]) == 4
    present = [c for c, row in enumerate(usage) if row[0] == row[0]]  # NaN rows: classes the images lack
    assert all(sum(usage[c]) == pytest.approx(1.0) for c in present)
    assert result.metrics["diag/mean_within_class_cosine"] < 0.9 and set(collapsed_classes(usage)) != set(present)
    # force the collapse Gumbel assignment can cause: every class's prototypes the same vector
    head: ProtoSegClassifier = model.classifier
    head.prototypes = head.prototypes[:, :1].expand_as(head.prototypes).clone()
    records = DatasetCatalog.get("digits_sem_seg_val")[:16]
    loader = build_test_loader(records, SemSegMapper(11, 255), 8, 0)
    scalars, arrays = split_diagnostics(diagnose(model, loader, torch.device("cpu")))
    assert scalars["diag/top_prototype_share"] == pytest.approx(1.0)
    assert scalars["diag/mean_within_class_cosine"] == pytest.approx(1.0)
    collapsed = collapsed_classes(arrays["prototype_usage"])
    assert collapsed and collapsed == [c for c, row in enumerate(arrays["prototype_usage"]) if row[0] == row[0]]
    # the report says so, and draws the usage
    collapsed_result = dataclasses.replace(result, diagnostics=arrays, metrics={**result.metrics, **scalars})
    write_report("collapse", [Cell.from_result(collapsed_result)], tmp_path / "r")
    report = (tmp_path / "r" / "report.md").read_text()
    assert "COLLAPSED in" in report and (tmp_path / "r" / "diagnostics_prototype_usage.png").stat().st_size > 2000
    assert "Trunk " in report and "deltas between them hold no backbone" in report


def test_prototype_usage_counts_each_pixel_for_its_closest_own_prototype():
    from backbones.features import Features

    head = ProtoSegClassifier(3, 8, preset="paper", num_prototypes=2).eval()  # embeddings: l2-normalised pixels
    prototypes = torch.nn.functional.normalize(torch.randn(3, 2, 8), dim=-1)
    head.prototypes = prototypes
    labels = torch.tensor([[0, 0, 0, 1], [1, 1, 255, 255]])  # [1, 2, 4] below; class 2 absent
    closest = [0, 0, 1, 1, 1, 0]  # the prototype each labelled pixel is given
    pixel = torch.zeros(1, 8, 2, 4)
    for i, (y, x) in enumerate([(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]):
        pixel[0, :, y, x] = prototypes[labels[y, x], closest[i]]
    values = head.diagnostics(Features(pixel, [pixel], (2, 4)), labels[None])
    usage = values["prototype_usage"]
    assert torch.allclose(usage[:2], torch.tensor([[2 / 3, 1 / 3], [1 / 3, 2 / 3]])) and usage[2].isnan().all()
    assert values["top_prototype_share"] == pytest.approx(2 / 3)
    cosines = (prototypes[:, 0] * prototypes[:, 1]).sum(-1)
    assert torch.allclose(values["within_class_cosine"], cosines, atol=1e-6)
    assert collapsed_classes(usage.tolist()) == [] and collapsed_classes([[0.95, 0.05], [0.5, 0.5]]) == [0]


def test_ssa_and_ecenet_diagnostics_describe_their_prototypes_and_class_embeddings(trunk_file):
    path, _ = trunk_file
    records = DatasetCatalog.get("digits_sem_seg_val")[:4]
    for classifier, scalar in (("ssa", "diag/mean_prototype_shift"), ("ece", "diag/mean_class_embedding_cosine")):
        cfg = apply_overrides(RunConfig(), TINY + [f"model.classifier={classifier}"])
        model = build_segmentor(cfg, 11, 255)
        scalars, arrays = split_diagnostics(diagnose(model, build_test_loader(records, SemSegMapper(11, 255), 2, 0),
                                                     torch.device("cpu")))
        assert set(scalars) == {scalar}
        if classifier == "ssa":
            assert len(arrays["prototype_shift"]) == 11 and all(0 <= s <= 2 for s in arrays["prototype_shift"])
            assert scalars[scalar] == pytest.approx(sum(arrays["prototype_shift"]) / 11)
        else:
            matrix = torch.tensor(arrays["class_embedding_cosine"])
            assert matrix.shape == (11, 11) and torch.allclose(matrix, matrix.T, atol=1e-5)
            assert torch.allclose(matrix.diagonal(), torch.ones(11), atol=1e-5)
    softmax = build_segmentor(apply_overrides(RunConfig(), TINY), 11, 255)
    assert diagnose(softmax, [[{"image": None, "sem_seg": None}]], torch.device("cpu")) == {}  # runs nothing
