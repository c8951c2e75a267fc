"""Test-time protocols (``harness.evaluation.predict_logits``), each checked against a result computed
independently from ``Segmentor.predict`` on a real (randomly initialised) model; and the extra
protocols of a cell logged under their own names."""

import pytest
import torch
import torch.nn.functional as F
from gridtools import tiny_cell

from harness.config import EvalConfig, RunConfig, apply_overrides, from_dict
from harness.engine import LocalContext, train_cell
from harness.errors import InputError
from harness.evaluation import predict_logits
from harness.modeling import build_segmentor

_TINY = tiny_cell(iters=2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    segmentor = build_segmentor(apply_overrides(RunConfig(), _TINY), num_classes=5, ignore_label=255).eval()
    for module in segmentor.modules():  # BatchNorm statistics that are not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return segmentor


@pytest.fixture(scope="module")
def image():
    return torch.randint(0, 256, (3, 64, 96), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def _predict(model, images: torch.Tensor) -> torch.Tensor:
    return model.predict(images.float())


def test_whole_at_native_size_is_one_forward(model, image):
    assert torch.equal(predict_logits(model, image, EvalConfig()), _predict(model, image[None])[0])


def test_slide_with_the_window_the_size_of_the_image_is_whole_image_inference(model, image):
    slide = EvalConfig(mode="slide", crop_size=[64, 96], stride=[32, 32])
    torch.testing.assert_close(predict_logits(model, image, slide), predict_logits(model, image, EvalConfig()))


@pytest.mark.parametrize("stride", [[32, 32], [16, 32]])
def test_slide_with_a_stride_that_tiles_exactly_averages_the_windows_logits(model, image, stride):
    """Windows of 32x32 every ``stride`` cover 64x96 exactly; each pixel's scores are the mean over
    the windows that hold it, each window predicted on its own."""
    height, width = image.shape[1:]
    total, count = torch.zeros(5, height, width), torch.zeros(height, width)
    for top in range(0, height - 32 + 1, stride[0]):
        for left in range(0, width - 32 + 1, stride[1]):
            total[:, top:top + 32, left:left + 32] += _predict(model, image[None, :, top:top + 32, left:left + 32])[0]
            count[top:top + 32, left:left + 32] += 1
    assert count.min() >= 1 and (count.max() > 1) == (stride[0] < 32)
    slide = EvalConfig(mode="slide", crop_size=[32, 32], stride=stride)
    torch.testing.assert_close(predict_logits(model, image, slide), total / count)


def test_slide_windows_end_at_the_border_when_the_stride_does_not_tile(model, image):
    """MMSeg's last window starts at size - crop: on 64x96 with 48x48 windows every 40, rows start
    at 0 and 16, columns at 0, 40 and 48."""
    total, count = torch.zeros(5, 64, 96), torch.zeros(64, 96)
    for top in (0, 16):
        for left in (0, 40, 48):
            total[:, top:top + 48, left:left + 48] += _predict(model, image[None, :, top:top + 48, left:left + 48])[0]
            count[top:top + 48, left:left + 48] += 1
    slide = EvalConfig(mode="slide", crop_size=[48, 48], stride=[40, 40])
    torch.testing.assert_close(predict_logits(model, image, slide), total / count)


def test_flip_alone_averages_the_probabilities_of_the_image_and_of_its_mirror(model, image):
    plain = _predict(model, image[None])[0].softmax(dim=0)
    mirrored = _predict(model, image.flip(-1)[None])[0].softmax(dim=0).flip(-1)
    torch.testing.assert_close(predict_logits(model, image, EvalConfig(flip=True)), (plain + mirrored) / 2)


def test_scales_average_the_probabilities_resized_back_to_the_image(model, image):
    expected = []
    for size in ((32, 48), (64, 96)):
        view = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)
        logits = F.interpolate(model.predict(view), size=(64, 96), mode="bilinear", align_corners=False)
        expected.append(logits[0].softmax(dim=0))
    protocol = EvalConfig(scales=[0.5, 1.0])
    torch.testing.assert_close(predict_logits(model, image, protocol), sum(expected) / 2)


@pytest.mark.parametrize("short_side, long_cap, seen", [(48, None, (48, 72)), (128, 160, (107, 160)), (None, 80, (53, 80))])
def test_short_side_resize_with_the_long_side_cap_predicts_at_that_size_and_returns_the_images(
        model, image, short_side, long_cap, seen):
    """64x96 to short side 48 is 48x72; to 128 capped at 160 long is 160/96 = 1.667: 107x160 (MMCV's
    int(x * f + 0.5)); the scores come back at 64x96, the label's size."""
    inputs = []
    hook = model.backbone.register_forward_pre_hook(lambda module, args: inputs.append(tuple(args[0].shape[-2:])))
    try:
        protocol = EvalConfig(short_side=short_side, max_long_side=long_cap)
        scores = predict_logits(model, image, protocol)
    finally:
        hook.remove()
    assert inputs == [seen] and scores.shape == (5, 64, 96)
    view = F.interpolate(image[None].float(), size=seen, mode="bilinear", align_corners=False)
    expected = F.interpolate(model.predict(view), size=(64, 96), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(scores, expected)


def test_a_batch_of_same_size_images_gives_each_images_scores(model, image):
    protocol = EvalConfig(mode="slide", crop_size=[32, 32], stride=[24, 24], scales=[0.75, 1.0], flip=True)
    batch = torch.stack([image, image.flip(-2)])
    together = predict_logits(model, batch, protocol)
    torch.testing.assert_close(together[1], predict_logits(model, image.flip(-2), protocol))


def test_protocol_settings_are_checked_with_the_key_named():
    with pytest.raises(InputError, match=r"eval.mode=slide: expected eval.crop_size and eval.stride"):
        from_dict(RunConfig, {"eval": {"mode": "slide"}})
    with pytest.raises(InputError, match=r"eval.extra.ms.scales\[0\]=0.0; expected > 0"):
        from_dict(RunConfig, {"eval": {"extra": {"ms": {"scales": [0]}}}})
    with pytest.raises(InputError, match=r"eval.crop_size=\[32\]: expected a list of 2 values"):
        from_dict(RunConfig, {"eval": {"crop_size": [32]}})


def test_a_cells_extra_protocols_are_logged_under_their_own_names():
    cfg = apply_overrides(RunConfig(), _TINY + ["eval.short_side=64", "eval.extra={ms_flip: {scales: [0.75, 1.25], flip: true}}"])
    result, _ = train_cell(cfg, LocalContext(torch.device("cpu")))
    metrics = result.metrics
    assert {"mIoU/ms_flip", "mACC/ms_flip", "pACC/ms_flip", "fwIoU/ms_flip"} <= set(metrics)
    assert 0 <= metrics["mIoU/ms_flip"] <= 100 and "IoU-1/ms_flip" not in metrics
    assert 0 <= metrics["mBoundaryIoU"] <= 100 and 0 <= metrics["ECE"] <= 100  # the main protocol's
    shares = [metrics[f"reliability/share-{k:02d}"] for k in range(15)]
    assert sum(shares) == pytest.approx(100)
    assert result.config["eval"]["extra"] == {"ms_flip": {"scales": [0.75, 1.25], "flip": True}}
