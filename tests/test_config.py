import pytest

from harness.config import RunConfig, apply_overrides, config_hash, from_dict
from harness.errors import InputError


def test_overrides_parse_yaml_values_into_typed_fields():
    cfg = apply_overrides(RunConfig(), ["train.lr=0.01", "data.scale_range=[1, 2]", "train.grad_clip=1",
                                        "model.classifier_kwargs.decoder_layers=2", "model.backbone=resnet18"])
    assert cfg.train.lr == 0.01 and cfg.data.scale_range == [1.0, 2.0] and cfg.train.grad_clip == 1.0
    assert cfg.model.classifier_kwargs == {"decoder_layers": 2}
    assert RunConfig().model.classifier_kwargs == {}  # defaults are not shared between configs


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=0.1", "unknown key 'train.lrr'; allowed keys here: iters, optimizer, lr"),
        ("train.iters=many", "train.iters: expected int, got 'many'"),
        ("train.iters=true", "train.iters: expected int, got True"),
        ("data.scale_range=2", r"data.scale_range: expected a list of float, got 2"),
        ("training.iters=3", "'training' is not a section"),
        ("train.iters", "expected key=value"),
        ("data.photometric.hue_delta=200", r"data.photometric.hue_delta=200; expected <= 180"),
        ("data.photometric.brightness_delta=-1", r"data.photometric.brightness_delta=-1.0; expected >= 0"),
        ("data.photometric.contrast_range=[1.5, 0.5]", r"data.photometric.contrast_range=\[1.5, 0.5\]; expected \[low, high\] with low <= high"),
        ("data.cat_max_ratio=1.5", r"data.cat_max_ratio=1.5; expected <= 1"),
        ("data.cat_max_ratio=0", r"data.cat_max_ratio=0.0; expected > 0"),
        ("data.scale_range=[2.0, 0.5]", r"data.scale_range=\[2.0, 0.5\]; expected \[low, high\] with low <= high"),
        ("data.max_long_side=0", r"data.max_long_side=0; expected >= 1"),
        ("train.schedule=cosine", r"train.schedule='cosine'; expected one of: poly, mmseg"),
        ("train.warmup_ratio=2", r"train.warmup_ratio=2.0; expected <= 1"),
    ],
)
def test_bad_overrides_name_the_key_and_expectation(override, message):
    with pytest.raises(InputError, match=message):
        apply_overrides(RunConfig(), [override])


def test_from_dict_rejects_wrong_section_type():
    with pytest.raises(InputError, match="train: expected a mapping"):
        from_dict(RunConfig, {"train": 3})


def test_config_hash_tracks_what_is_computed_not_where():
    base = RunConfig()
    assert config_hash(base) == config_hash(RunConfig())
    assert config_hash(apply_overrides(base, ["output_dir=/elsewhere", "data.num_workers=0"])) == config_hash(base)
    assert config_hash(apply_overrides(base, ["train.seed=1"])) != config_hash(base)
    assert len(config_hash(base)) == 16


def test_the_papers_pipeline_schedule_and_loss_settings_leave_earlier_hashes_alone_at_their_defaults():
    """``data.max_long_side``, ``cat_max_ratio``, ``photometric``, ``train.schedule``, ``warmup_ratio``
    and ``min_lr`` join a cell's identity only when set away from their defaults."""
    base = RunConfig()
    spelled = apply_overrides(base, ["data.cat_max_ratio=1.0", "data.photometric.enabled=false", "train.schedule=poly",
                                     "train.warmup_ratio=0.001", "train.min_lr=0", "data.max_long_side=null"])
    assert config_hash(spelled) == config_hash(base)
    for changed in ("data.cat_max_ratio=0.75", "data.photometric.enabled=true", "data.photometric.hue_delta=9",
                    "train.schedule=mmseg", "train.min_lr=0.0001", "data.max_long_side=2048"):
        assert config_hash(apply_overrides(base, [changed])) != config_hash(base), changed
