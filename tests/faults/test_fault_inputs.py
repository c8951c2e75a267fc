"""Bad input, generated: the grid-spec parser and the dataset validator under hypothesis,
and a table of bad command lines. Every bad input gets an ``InputError`` (exit 2) whose one
line names the file or key; nothing else escapes."""

import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from harness.cli import main
from harness.config import DataConfig, MeasureConfig, ModelConfig, TrainConfig
from harness.data.validate import validate_folders
from harness.errors import InputError
from harness.grid import GridSpec, Resources, load_grid

_VALID = {"name": "fuzz", "backbones": ["resnet10t"], "classifiers": ["softmax", "query"], "seeds": [0],
          "train": {"iters": 10, "lr": 0.01}, "data": {"batch_size": 2}, "resources": {"cpus": 1}}
_SECTION_KEYS = {"train": ["iters", "lr", "weight_decay", "warmup_iters", "log_period"],
                 "data": ["batch_size", "image_size", "num_workers", "hflip_prob"],
                 "model": ["embed_dim"], "measure": ["image_size", "iters", "warmup"],
                 "resources": ["cpus", "gpus", "retries", "memory_gb"]}
_TOP_KEYS = [f.name for f in GridSpec.__dataclass_fields__.values()]
_FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_identifier = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=10))
_yaml_data = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                          max_leaves=12)


def _load(data) -> GridSpec:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.yaml"
        path.write_text(yaml.safe_dump(data))
        return load_grid(path)


def _rejected(data, *fragments: str) -> str:
    with pytest.raises(InputError) as info:
        _load(data)
    message = str(info.value)
    assert "\n" not in message and message.split(": ", 1)[0].endswith("spec.yaml")
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_the_base_spec_is_valid():
    assert _load(_VALID).classifiers == ["softmax", "query"]


@_FAST
@given(_yaml_data)
def test_any_yaml_is_a_spec_or_an_input_error(data):
    try:
        _load(data)
    except InputError as exc:
        assert "\n" not in str(exc)


@_FAST
@given(st.sampled_from(sorted(_SECTION_KEYS) + [None]), _identifier)
def test_an_unknown_key_is_named_with_its_path(section, key):
    data = {**_VALID}
    if section is None:
        if key in _TOP_KEYS:
            return
        data[key] = 1
        _rejected(data, f"unknown key {key!r}")
    else:
        if key in GridSpec.__dataclass_fields__ or key in _all_fields(section):
            return
        data[section] = {**data.get(section, {}), key: 1}
        _rejected(data, f"unknown key '{section}.{key}'")


def _all_fields(section: str) -> set[str]:
    sections = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "measure": MeasureConfig,
                "resources": Resources}
    return set(sections[section].__dataclass_fields__)


@_FAST
@given(st.sampled_from([(s, k) for s, keys in _SECTION_KEYS.items() for k in keys]),
       st.one_of(st.text(min_size=1, max_size=6).filter(lambda t: not _numeric(t)), st.lists(st.integers(), max_size=2),
                 st.integers(-10**6, -1), st.floats(allow_nan=True).filter(lambda f: not np.isfinite(f))))
def test_a_wrong_type_or_out_of_range_value_is_named_with_its_path(where, value):
    section, key = where
    # data.image_size takes a crop [h, w] too: two sides of at least 16 are a valid value
    assume(not (key == "image_size" and isinstance(value, list) and len(value) == 2 and min(value) >= 16))
    data = {**_VALID, section: {**_VALID.get(section, {}), key: value}}
    _rejected(data, f"{section}.{key}")


def _numeric(text: str) -> bool:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@_FAST
@given(st.sampled_from(["backbones", "classifiers", "datasets", "necks"]), st.integers(0, 2),
       st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=16))
def test_an_unknown_axis_value_is_named_with_its_position_and_the_allowed_values(axis, position, name):
    values = list(_load(_VALID).__dict__[axis])
    values.insert(min(position, len(values)), f"zz{name}")
    _rejected({**_VALID, axis: values}, f"{axis}[{min(position, len(values) - 1)}]: unknown")


@pytest.mark.parametrize("axis", ["backbones", "classifiers", "datasets", "seeds", "necks"])
def test_empty_and_repeated_axes(axis):
    _rejected({**_VALID, axis: []}, f"{axis}: empty axis")
    value = {"seeds": 3, "backbones": "resnet10t", "classifiers": "softmax", "datasets": "digits_sem_seg",
             "necks": "mlp"}[axis]
    _rejected({**_VALID, axis: [value, value]}, f"{axis}: {value} listed more than once")


@pytest.mark.parametrize("data, fragments", [
    ({**_VALID, "name": "../../etc"}, ["name='../../etc'"]),
    ({**_VALID, "name": ""}, ["name: required"]),
    ({**_VALID, "resources": {"gpus": 1.5}}, ["resources.gpus=1.5"]),
    ({**_VALID, "classifier_overrides": {"ece": {"train": {"iters": 5}}}}, ["classifier_overrides: ece not on"]),
    ({**_VALID, "classifier_overrides": {"query": {"trian": {}}}}, ["classifier_overrides.query: unknown section"]),
    ({**_VALID, "backbone_overrides": {"resnet10t": {"train": {"iters": 0}}}},
     ["backbone_overrides.resnet10t.train.iters=0; expected >= 1"]),
    ({**_VALID, "train": {"lr": 0}}, ["train.lr=0.0; expected > 0"]),
    ({**_VALID, "data": {"scale_range": [1.0]}}, ["data.scale_range=[1.0]: expected a list of 2 values"]),
    ({**_VALID, "train": {"optimizer": "adam"}}, ["train.optimizer='adam'; expected one of: adamw, sgd"]),
    ({**_VALID, "necks": ["mlp", "fpn"], "backbone_overrides": {"resnet10t": {"model": {"neck": "fpn"}}}},
     ["backbone_overrides.resnet10t.model.neck: a neck can be set per backbone or classifier only when"]),
    ({**_VALID, "necks": ["mlp", "fpn"], "classifier_overrides": {"query": {"model": {"neck": "fpn"}}}},
     ["classifier_overrides.query.model.neck: a neck can be set per backbone or classifier only when"]),
    ({**_VALID, "backbone_overrides": {"resnet10t": {"model": {"neck": "unet"}}}},
     ["backbone_overrides.resnet10t.model.neck: unknown neck 'unet'; known necks: deeplabv3plus, fcn, fpn"]),
])
def test_named_bad_specs(data, fragments):
    _rejected(data, *fragments)


# --- the dataset validator -------------------------------------------------------------

_FAULTS = ["clean", "missing_label", "missing_image", "truncated_image", "garbage_label", "rgb_label",
           "size_mismatch", "out_of_range"]


def _write_pair(image_root: Path, gt_root: Path, stem: str, fault: str, rng) -> None:
    image = Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8))
    label = rng.integers(0, 3, (12, 10)).astype(np.uint8)
    if fault == "out_of_range":
        label[0, 0] = 7
    if fault != "missing_image":
        image.save(image_root / f"{stem}.png")
    if fault == "truncated_image":
        data = (image_root / f"{stem}.png").read_bytes()
        (image_root / f"{stem}.png").write_bytes(data[: len(data) // 2])
    if fault == "missing_label":
        return
    if fault == "garbage_label":
        (gt_root / f"{stem}.png").write_bytes(b"not a png at all")
    elif fault == "rgb_label":
        Image.fromarray(np.stack([label] * 3, -1)).save(gt_root / f"{stem}.png")
    elif fault == "size_mismatch":
        Image.fromarray(label[:6]).save(gt_root / f"{stem}.png")
    else:
        Image.fromarray(label).save(gt_root / f"{stem}.png")


@_FAST
@given(st.lists(st.sampled_from(_FAULTS), min_size=1, max_size=8), st.integers(0, 2**16))
def test_the_validator_reports_every_bad_file_once_and_nothing_else(faults, seed):
    if all(f == "missing_image" for f in faults):
        faults = faults + ["clean"]  # a folder with no image at all is a different error
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as folder:
        image_root, gt_root = Path(folder) / "images", Path(folder) / "labels"
        image_root.mkdir()
        gt_root.mkdir()
        for index, fault in enumerate(faults):
            _write_pair(image_root, gt_root, f"s{index:02d}", fault, rng)
        problems = validate_folders(image_root, gt_root, num_classes=3, image_suffix=".png")
    named = sorted(f"s{index:02d}" for index, fault in enumerate(faults) if fault != "clean")
    stems = [set(re.findall(r"/(s\d\d)\.png", problem)) for problem in problems]
    assert all(len(found) == 1 for found in stems) and all("\n" not in problem for problem in problems)
    assert sorted(found.pop() for found in stems) == named  # one line per bad pair, naming its file


def test_validate_data_cli_lists_every_bad_file(tmp_path, capsys):
    image_root, gt_root = tmp_path / "images", tmp_path / "labels"
    image_root.mkdir()
    gt_root.mkdir()
    rng = np.random.default_rng(0)
    for index, fault in enumerate(_FAULTS):
        _write_pair(image_root, gt_root, f"s{index:02d}", fault, rng)
    argv = ["validate-data", "--image-root", str(image_root), "--gt-root", str(gt_root), "--num-classes", "3",
            "--image-ext", "png"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "segheads: error: 7 bad file(s), listed above" in err
    expected = {"missing_label": f"{image_root / 's01.png'}: no label map",
                "missing_image": f"{gt_root / 's02.png'}: no image",
                "truncated_image": f"cannot read image {image_root / 's03.png'}",
                "garbage_label": f"cannot read label map {gt_root / 's04.png'}",
                "rgb_label": f"label map {gt_root / 's05.png'} has mode RGB",
                "size_mismatch": f"image {image_root / 's06.png'} is 10x12 but label map",
                "out_of_range": f"label map {gt_root / 's07.png'} has value 7; expected class ids in [0, 3)"}
    for text in expected.values():
        assert text in err
    assert main(["validate-data", "digits_sem_seg"]) == 0


@pytest.mark.parametrize("argv, fragment", [
    (["run", "--iters", "-3"], "train.iters=-3; expected >= 1"),
    (["run", "--set", "train.lr=abc"], "train.lr: expected float, got 'abc'"),
    (["run", "--set", "nokey"], "override 'nokey': expected key=value"),
    (["run", "--set", "train.lr=.nan"], "train.lr=nan; expected a finite number"),
    (["measure", "--num-classes", "0"], "--num-classes 0: expected >= 1"),
    (["measure", "--set", "measure.dtype=fp8"], "measure.dtype='fp8'; expected one of"),
    (["grid", "no-such-spec.yaml"], "no-such-spec.yaml: cannot read grid spec"),
    (["check", "no-such-ref.yaml", "--results", "r.jsonl"], "no-such-ref.yaml"),
    (["import-results", "no-such.jsonl"], "no-such.jsonl: no such file"),
    (["validate-data"], "give a dataset NAME or --image-root"),
    (["validate-data", "--image-root", "."], "also needs --gt-root and --num-classes"),
    (["validate-data", "no_such_dataset"], "unknown dataset 'no_such_dataset'"),
    (["report", "--scaling", "--classes", "0"], "expected positive values"),
])
def test_bad_command_lines_exit_2_with_one_line(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segheads: error: ") and fragment in err[0]


@pytest.mark.parametrize("argv", [["measure", "--batch-sizes", "1,x"], ["grid"], ["run", "--iters", "many"],
                                  ["list", "widgets"]])
def test_malformed_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and "error:" in capsys.readouterr().err


def test_png_images_are_detected_and_an_explicit_wrong_extension_names_the_flag(tmp_path, capsys):
    from harness.data import DatasetCatalog
    from harness.data.builtin import register_sem_seg

    image_root, gt_root = tmp_path / "images", tmp_path / "labels"
    image_root.mkdir()
    gt_root.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(image_root / f"p{index}.png")
        Image.fromarray(rng.integers(0, 3, (12, 10), dtype=np.uint8)).save(gt_root / f"p{index}.png")
    folders = ["--image-root", str(image_root), "--gt-root", str(gt_root), "--num-classes", "3"]
    assert main(["validate-data", *folders]) == 0
    assert "3 pairs, 0 problem(s)" in capsys.readouterr().err
    assert main(["validate-data", *folders, "--image-ext", "jpg"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"segheads: error: no *.jpg images under {image_root}; found 3 *.png image(s): pass --image-ext png "
                   f"(image_ext='png' in register_sem_seg); expected layout: IMAGE_ROOT/<stem>.jpg paired with "
                   "GT_ROOT/<stem>.png (same relative path and stem)")
    register_sem_seg("pngs_detected", image_root, gt_root, ["a", "b", "c"])
    assert [Path(r["file_name"]).name for r in DatasetCatalog.get("pngs_detected")] == ["p0.png", "p1.png", "p2.png"]
    Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(image_root / "odd.bmp")
    register_sem_seg("pngs_and_bmp", image_root, gt_root, ["a", "b", "c"])
    with pytest.raises(InputError, match=rf"no \*\.jpg images under {image_root} but 1 \*\.bmp, 3 \*\.png; pass --image-ext"):
        DatasetCatalog.get("pngs_and_bmp")
