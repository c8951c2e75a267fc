import dataclasses
import json
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from classifiers import list_classifiers
from harness.check import load_reference
from harness.cli import main
from harness.config import MeasureConfig, RunConfig, apply_overrides
from harness.data import label_space
from harness.errors import InputError
from harness.measure import (
    count_flops,
    count_parameters,
    machine_matmul_gflops,
    measure_latency,
    measure_model,
    pinned_threads,
    training_flops,
)
from harness.modeling import build_segmentor

REFERENCES = Path(__file__).resolve().parents[1] / "jobs" / "reference"
CPU = torch.device("cpu")


def _segmentor(classifier="softmax", num_classes=5, embed_dim=32, backbone="test_convnext", **kwargs):
    overrides = [f"model.backbone={backbone}", f"model.classifier={classifier}", f"model.embed_dim={embed_dim}"]
    cfg = apply_overrides(RunConfig(), overrides + [f"model.classifier_kwargs.{k}={v}" for k, v in kwargs.items()])
    torch.manual_seed(0)
    return build_segmentor(cfg, num_classes, 255)


class _TinyConvNet(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))


class _TinyAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qk = nn.Linear(8, 12)

    def forward(self, x):  # x: [B, 5, 8]
        q, k = self.qk(x).chunk(2, dim=-1)  # [B, 5, 6] each
        return q @ k.transpose(1, 2)  # [B, 5, 5]


def test_flops_of_tiny_networks_equal_the_hand_count_in_both_units():
    # conv 3x3, 3->4 on 8x8: 8*8*4*27 = 6912 MACs; conv 1x1, 4->2: 8*8*2*4 = 512 MACs; per image.
    flops = count_flops(_TinyConvNet(), torch.rand(2, 3, 8, 8))
    assert flops["gmacs/total"] * 1e9 == pytest.approx(7424)
    assert flops["gflops/total"] * 1e9 == pytest.approx(2 * 7424)
    assert flops["gmacs/0"] * 1e9 == pytest.approx(6912) and flops["gmacs/2"] * 1e9 == pytest.approx(512)
    assert "gmacs/1" not in flops  # the ReLU does no multiply-accumulate
    # linear 8->12 on 5 tokens: 480 MACs; q @ k^T: 5*5*6 = 150 MACs
    flops = count_flops(_TinyAttention(), torch.rand(3, 5, 8))
    assert flops["gmacs/total"] * 1e9 == pytest.approx(630)
    assert flops["gmacs/qk"] * 1e9 == pytest.approx(480)  # the matmul is outside any child: total only


def test_swin_attention_matmuls_are_counted():
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    layer_macs, attention_macs = [], []

    def layer_hook(module, inputs, output):
        if isinstance(module, nn.Linear):
            layer_macs.append(output.numel() * module.in_features)
        else:
            layer_macs.append(output.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1])

    def attention_hook(module, inputs, output):  # [B * windows, N, C]: QK^T and AV, N*N*C MACs each
        windows, tokens, channels = inputs[0].shape
        attention_macs.append(2 * windows * tokens * tokens * channels)

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.register_forward_hook(layer_hook)
        if type(module).__name__ == "WindowAttention":
            module.register_forward_hook(attention_hook)
    flops = count_flops(model, torch.rand(1, 3, 224, 224))
    assert len(attention_macs) == 12  # 2 + 2 + 6 + 2 blocks
    assert flops["gmacs/total"] * 1e9 > sum(layer_macs)
    assert flops["gmacs/total"] * 1e9 == pytest.approx(sum(layer_macs) + sum(attention_macs), rel=1e-9)


@pytest.mark.parametrize("classifier", list_classifiers())
def test_part_flops_add_up_and_param_split_sums(classifier):
    model = _segmentor(classifier)
    flops = count_flops(model, torch.rand(2, 3, 64, 64) * 255)
    parts = flops["gflops/backbone"] + flops["gflops/neck"] + flops["gflops/head"]
    assert flops["gflops/total"] == pytest.approx(parts, rel=1e-12)
    assert flops["gflops/total"] == pytest.approx(2 * flops["gmacs/total"])
    params = count_parameters(model)
    assert params["params/total"] == params["params/backbone"] + params["params/neck"] + params["params/head"]
    assert params["params/head"] == params["params/head_inference"] + params["params/head_training_only"]
    assert params["params/inference"] == params["params/total"] - params["params/head_training_only"]
    assert model.training  # counting left the model as it found it
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("classifier", list_classifiers())
def test_training_flops_count_the_real_model_s_forward_without_its_weights(classifier, tmp_path):
    base = apply_overrides(RunConfig(), [f"model.classifier={classifier}", "model.backbone=test_convnext",
                                         "model.embed_dim=32", "train.iters=7", "data.batch_size=3"])
    names, ignore = label_space(base.data.dataset)
    flops = count_flops(build_segmentor(base, len(names), ignore), torch.rand(1, 3, *base.data.crop_size) * 255)
    forward, head = flops["gflops/total"] * 1e9, flops["gflops/head"] * 1e9
    # the estimate builds the architecture only: a weights file that does not exist is never opened
    absent = apply_overrides(base, [f"model.backbone_kwargs.checkpoint={tmp_path / 'absent.pt'}"])
    assert training_flops(absent) == pytest.approx(7 * 3 * 3 * forward, rel=1e-9)  # iters x batch x 3 forwards
    frozen = apply_overrides(absent, [f"trunk.checkpoint={tmp_path / 'trunk.pt'}", "trunk.train=false"])
    assert training_flops(frozen) == pytest.approx(7 * 3 * (3 * head + forward - head), rel=1e-9)
    longer = dataclasses.replace(absent, train=dataclasses.replace(absent.train, iters=14))
    assert training_flops(longer) == pytest.approx(2 * training_flops(absent), rel=1e-12)


def test_softmax_head_flops_are_c_times_d_per_feature_pixel():
    model = _segmentor("softmax", num_classes=7, embed_dim=16)
    flops = count_flops(model, torch.rand(1, 3, 64, 64))
    assert flops["gmacs/head"] * 1e9 == pytest.approx(7 * 16 * 16 * 16)  # mlp neck output at stride 4: 16x16


def test_latency_percentiles_throughput_memory_and_call_count():
    model = _segmentor("protoseg").train()
    calls = []
    model.classifier.register_forward_hook(lambda *_: calls.append(1))
    settings = MeasureConfig(image_size=64, batch_sizes=[1, 3], warmup=2, iters=5)
    with pinned_threads(1):
        metrics = measure_latency(model, settings, CPU)
    assert len(calls) == 2 * (2 + 5)  # warm-up and timed forwards for each batch size
    for batch in (1, 3):
        lat = [metrics[f"latency/bs{batch}/{q}_ms"] for q in ("p50", "p90", "p99")]
        assert 0 < lat[0] <= lat[1] <= lat[2]
        assert metrics[f"latency/bs{batch}/std_ms"] >= 0
        assert metrics[f"throughput/bs{batch}/images_per_s"] == pytest.approx(batch * 1e3 / lat[0])
    assert metrics["memory/bs3/peak_mb"] > metrics["memory/bs1/peak_mb"] > 0  # activations, measured on Linux
    assert model.training


def test_measure_model_pins_threads_records_how_and_keeps_the_model():
    model = _segmentor("softmax")
    before = torch.get_num_threads()
    weight = model.classifier.projection.weight
    metrics, record = measure_model(model, MeasureConfig(image_size=32, iters=3, warmup=1, channels_last=True), CPU,
                                    threads=1)
    assert torch.get_num_threads() == before
    assert record["machine"]["threads"] == 1 and record["machine"]["torch"] == torch.__version__
    assert record["settings"]["channels_last"] is True and record["timer"] == "perf_counter"
    assert weight.is_contiguous()  # channels_last applied to a copy, not the caller's model
    peak = metrics["efficiency/machine_matmul_gflops_per_s"]
    assert peak > 0
    achieved = metrics["gflops/total"] * metrics["throughput/bs1/images_per_s"]
    assert metrics["efficiency/bs1/achieved_gflops_per_s"] == pytest.approx(achieved)
    assert metrics["efficiency/bs1/fraction_of_matmul"] == pytest.approx(achieved / peak)
    with pinned_threads(1):
        assert machine_matmul_gflops(CPU) == peak  # measured once per process and thread count


@pytest.mark.parametrize("key, value, message", [
    ("dtype", "fp8", "measure.dtype='fp8'; expected one of: float32, bfloat16, float16"),
    ("batch_sizes", [], "measure.batch_sizes=[]; expected a non-empty list"),
    ("iters", 0, "measure.iters=0"),
])
def test_bad_measure_settings_name_the_key(key, value, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        measure_latency(_segmentor(), MeasureConfig(**{key: value}), CPU)


def test_measure_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "m.json"
    code = main(["measure", "--backbone", "test_convnext", "--classifier", "ece", "--num-classes", "11",
                 "--image-size", "32", "--batch-sizes", "1,2", "--threads", "1", "--json", str(out),
                 "--set", "model.embed_dim=32", "measure.iters=3", "measure.warmup=1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ece on test_convnext + mlp neck, C=11, D=32, 32x32, float32" in printed
    assert "p50 ms" in printed and "machine matmul:" in printed
    data = json.loads(out.read_text())
    assert data["model"]["classifier"] == "ece" and data["measurement"]["settings"]["batch_sizes"] == [1, 2]
    assert {"latency/bs2/p99_ms", "gflops/head", "params/head_training_only"} <= set(data["metrics"])
    assert main(["measure", "--dtype", "fp8"]) == 2
    assert "measure.dtype='fp8'" in capsys.readouterr().err


def _reference_metrics(select: dict) -> dict:
    if "timm_model" in select:
        model = timm.create_model(select["timm_model"], pretrained=False)
        size = select["image_size"]
        return {**count_parameters(model), **count_flops(model, torch.rand(1, 3, size, size))}
    hparams = {k: v for k, v in select.items() if k not in ("classifier", "num_classes", "embed_dim")}
    model = _segmentor(select["classifier"], select["num_classes"], select["embed_dim"], "resnet10t", **hparams)
    return count_parameters(model)


# Reference files that need no training; the grids' own (jobs/reference/quickstart.yaml) are
# checked by `segheads check` after the grid runs (.ci/run).
NO_TRAINING = ("protoseg_table4_params.yaml", "timm_backbones_224.yaml")


def test_every_reference_file_loads():
    assert {p.name for p in REFERENCES.glob("*.yaml")} >= set(NO_TRAINING)
    for path in REFERENCES.glob("*.yaml"):
        assert load_reference(path).cases


@pytest.mark.parametrize("name", NO_TRAINING)
def test_reference_files_hold(name):
    reference = load_reference(REFERENCES / name)
    failures = [f"{case.select}: {message}" for case in reference.cases
                for message in case.failures(_reference_metrics(case.select))]
    assert not failures, "\n".join(failures)


def test_reference_check_fails_when_tightened(tmp_path):
    path = tmp_path / "ref.yaml"
    path.write_text("name: t\nsource: test\ncases:\n  - select: {}\n    expect:\n"
                    "      - [params/head, 1000, 10]\n      - [gmacs/total, 2.0, '5%']\n")
    (case,) = load_reference(path).cases
    assert case.failures({"params/head": 1010, "gmacs/total": 2.1}) == []
    assert case.failures({"params/head": 1011, "gmacs/total": 1.89}) == [
        "params/head: measured 1011, expected 1000 +- 10 (off by +11)",
        "gmacs/total: measured 1.89, expected 2 +- 5% (off by -0.11)",
    ]
    assert case.failures({}) == ["params/head: not measured (expected 1000 +- 10)",
                                 "gmacs/total: not measured (expected 2 +- 5%)"]


@pytest.mark.parametrize("text, message", [
    ("cases: []", "non-empty list 'cases'"),
    ("cases:\n  - select: {}\n    expect: [[params/head, 1e6, 0]]", r"cases\[0\].expect\[0\] value: expected a number, got '1e6'"),
    ("cases:\n  - select: {}\n    expect: [[params/head, 1, 'x']]", "tolerance 'x'; expected a number or a percentage"),
    ("cases:\n  - select: {}\n    expect: [[params/head, 1]]", r"expected \[metric, value, tolerance\]"),
    ("name: x\nwhat: 1\ncases: []", "non-empty list 'cases'"),
])
def test_bad_reference_files_name_the_entry(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_reference(path)


def test_compiled_measurement_times_a_compiled_copy():
    from torch._dynamo.utils import counters

    model = _segmentor("query")
    captured = counters["stats"]["unique_graphs"]
    metrics, record = measure_model(model, MeasureConfig(image_size=32, iters=3, warmup=2, compile=True), CPU, 1)
    assert record["settings"]["compile"] is True and metrics["latency/bs1/p50_ms"] > 0
    assert counters["stats"]["unique_graphs"] > captured  # dynamo captured the timed forward
    assert getattr(model, "_compiled_call_impl", None) is None  # the caller's model is not compiled
