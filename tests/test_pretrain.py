"""Built-in backbone weights (``checkpoint: builtin:digits``): made once, cached, RNG-neutral."""

import io
import json
import logging
import threading

import numpy as np
import pytest
import torch

from backbones import build_backbone
from harness.config import RunConfig, apply_overrides
from harness.data.digits import digit_pools, make_digit_crop
from harness.errors import InputError
from harness.modeling import (
    build_segmentor,
    ensure_digits_backbone,
    load_segmentor,
    resolve_backbone_kwargs,
    uncached_builtin_weights,
)

_STEPS = 40


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGHEADS_CACHE", str(tmp_path))
    return tmp_path


def test_other_checkpoints_pass_through_and_unknown_builtin_names_the_choices(cache):
    assert resolve_backbone_kwargs("test_resnet", {"checkpoint": "w.pt", "drop_rate": 0.1}) == {
        "checkpoint": "w.pt", "drop_rate": 0.1}
    assert resolve_backbone_kwargs("test_resnet", {}) == {}
    with pytest.raises(InputError, match=r"checkpoint: unknown built-in weights 'builtin:imagenet'.*builtin:digits"):
        resolve_backbone_kwargs("test_resnet", {"checkpoint": "builtin:imagenet"})
    assert not (cache / "pretrained").exists()


def test_digit_crop_draws_one_digit_of_its_class_from_the_pool():
    samples, targets = digit_pools(0)["train"]
    image, label = make_digit_crop(np.random.default_rng(5), (samples, targets), 32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert label in set(targets.tolist())
    # A single-class pool gives that class.
    image, label = make_digit_crop(np.random.default_rng(5), (samples[targets == 7], targets[targets == 7]), 32)
    assert label == 7


def test_weights_are_made_once_loaded_by_the_backbone_and_leave_the_global_rng_alone(cache, caplog):
    caplog.set_level(logging.INFO, logger="segheads")
    assert uncached_builtin_weights("test_resnet", {"checkpoint": "w.pt"}) is None
    waiting = uncached_builtin_weights("test_resnet", {"checkpoint": "builtin:digits"})
    assert waiting is not None and waiting.parent == cache / "pretrained" and not waiting.exists()
    rng_before = torch.random.get_rng_state()
    path = ensure_digits_backbone("test_resnet", {}, steps=_STEPS)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # a cell seeded before builds the same model
    assert path.is_file() and path.parent == cache / "pretrained"
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["steps"] == _STEPS and 0.0 <= record["accuracy"] <= 1.0
    assert sum("pretraining test_resnet" in line for line in caplog.messages) == 1

    stamp = path.stat().st_mtime_ns
    assert ensure_digits_backbone("test_resnet", {}, steps=_STEPS) == path
    assert path.stat().st_mtime_ns == stamp and sum("pretraining" in line for line in caplog.messages) == 1

    state = torch.load(path, weights_only=True)
    fresh = build_backbone("test_resnet")
    loaded = build_backbone("test_resnet", checkpoint=str(path))
    for key, value in state.items():
        assert torch.equal(loaded.body.state_dict()[key], value)
    changed = [key for key, value in state.items() if value.is_floating_point() and key.endswith("weight")]
    assert any(not torch.equal(fresh.body.state_dict()[key], state[key]) for key in changed)


def test_other_backbone_kwargs_get_their_own_weights(cache):
    plain = ensure_digits_backbone("test_resnet", {}, steps=_STEPS)
    dropped = ensure_digits_backbone("test_resnet", {"drop_rate": 0.2}, steps=_STEPS)
    assert plain != dropped and plain.is_file() and dropped.is_file()


def test_concurrent_cells_pretrain_once(cache, caplog):
    caplog.set_level(logging.INFO, logger="segheads")
    paths = []
    workers = [threading.Thread(target=lambda: paths.append(
        ensure_digits_backbone("test_resnet", {}, steps=_STEPS))) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(paths) == 2 and paths[0] == paths[1]
    assert sum("pretraining" in line for line in caplog.messages) == 1
    path = paths[0]  # the weights, their record and the lock; no staging file left
    assert sorted(p.name for p in (cache / "pretrained").iterdir()) == sorted(
        path.with_suffix(suffix).name for suffix in (".json", ".lock", ".pt"))


def test_a_logged_model_is_rebuilt_without_making_its_initial_weights(cache):
    cfg = apply_overrides(RunConfig(), ["model.backbone=test_resnet", "model.embed_dim=16",
                                        "model.backbone_kwargs.checkpoint=builtin:digits"])
    plain = apply_overrides(RunConfig(), ["model.backbone=test_resnet", "model.embed_dim=16"])
    trained = build_segmentor(plain, 11, 255)
    state = {key: value + 1 if value.is_floating_point() else value for key, value in trained.state_dict().items()}
    rebuilt = load_segmentor(cfg, _bytes(state))
    assert not (cache / "pretrained").exists()
    for key, value in state.items():
        assert torch.equal(rebuilt.state_dict()[key], value)


def test_rebuilding_a_logged_model_never_asks_the_model_hub(monkeypatch):
    """A cell trained from ``pretrained: true`` rebuilds (measurement, predict, the report's
    panels) without the hub, here unreachable: its trained weights replace every parameter."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = apply_overrides(RunConfig(), ["model.backbone=resnet10t", "model.embed_dim=16",
                                        "model.backbone_kwargs={pretrained: true, checkpoint: /nowhere/w.pt}"])
    with pytest.raises(Exception):  # building it as trained needs the hub
        build_segmentor(hub, 11, 255)
    plain = apply_overrides(hub, ["model.backbone_kwargs={}"])
    state = {key: value + 1 if value.is_floating_point() else value
             for key, value in build_segmentor(plain, 11, 255).state_dict().items()}
    rebuilt = load_segmentor(hub, _bytes(state))
    assert all(torch.equal(rebuilt.state_dict()[key], value) for key, value in state.items())


def _bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()
