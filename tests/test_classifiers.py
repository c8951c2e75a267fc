import pytest
import torch
from torch import nn

from backbones import Features
from classifiers import ClassifierOutput, PixelClassifier, build_classifier, list_classifiers, register_classifier
from harness.errors import InputError


def _features(batch=2, dim=32, size=8):
    return Features(pixel=torch.randn(batch, dim, size, size), pyramid=[], image_size=(size * 4, size * 4))


def test_registry_lists_and_rejects_unknown_names_and_hparams():
    assert {"softmax", "query"} <= set(list_classifiers())
    with pytest.raises(InputError, match="unknown classifier 'linear'.*query.*softmax"):
        build_classifier("linear", num_classes=3, in_channels=8)
    with pytest.raises(InputError, match="unknown hyper-parameter.*decoder_layer.*accepted: decoder_layers"):
        build_classifier("query", num_classes=3, in_channels=8, decoder_layer=1)


@pytest.mark.parametrize("name, hparams", [("softmax", {}), ("query", {}), ("query", {"decoder_layers": 2})])
def test_logits_and_named_losses(name, hparams):
    head = build_classifier(name, num_classes=5, in_channels=32, **hparams)
    features = _features()
    inference = head(features)
    assert isinstance(inference, ClassifierOutput)
    assert inference.logits.shape == (2, 5, 8, 8) and inference.losses == {}
    targets = torch.randint(0, 5, (2, 32, 32))
    out = head(features, targets)
    assert set(out.losses) == {"ce"} and out.losses["ce"].ndim == 0
    out.losses["ce"].backward()
    assert all(p.grad is not None for p in head.learnable_parameters())


def test_query_logits_are_scaled_cosines():
    head = build_classifier("query", num_classes=4, in_channels=16, init_scale=7.0)
    logits = head(_features(dim=16)).logits
    assert logits.abs().max() <= 7.0 + 1e-4
    features = _features(dim=16)
    scaled = Features(features.pixel * 3.0, [], features.image_size)
    torch.testing.assert_close(head(features).logits, head(scaled).logits)


def test_ignored_pixels_do_not_contribute_and_all_ignored_gives_zero():
    head = build_classifier("softmax", num_classes=3, in_channels=32, ignore_index=7)
    features = _features()
    targets = torch.randint(0, 3, (2, 32, 32))
    partly = targets.clone()
    partly[:, :16] = 7
    logits = nn.functional.interpolate(head(features).logits, size=(32, 32), mode="bilinear", align_corners=False)
    expected = nn.functional.cross_entropy(logits[:, :, 16:], targets[:, 16:])
    torch.testing.assert_close(head(features, partly).losses["ce"], expected)
    assert head(features, torch.full_like(targets, 7)).losses["ce"].item() == 0.0


@pytest.mark.parametrize("name, code_average", [("softmax", "labelled"), ("query", "labelled"),
                                                ("protoseg", "labelled"), ("ece", "all"), ("ssa", "all")])
def test_loss_average_all_divides_the_summed_ce_by_every_pixel(name, code_average):
    """``loss_average="all"`` is MMSegmentation's CrossEntropyLoss (avg_non_ignore=False): the
    summed CE over all pixels, ignored ones counting 0; ``"labelled"`` torch's mean. A paper
    head's code preset runs what its authors' code runs (ProtoSeg: torch's CE; ECENet and SSA:
    MMSeg's loss_decode); SSA's coarse and teacher CEs are torch's in its code, so stay labelled."""
    torch.manual_seed(0)
    pyramid = [torch.randn(2, 32, 8 >> i, 8 >> i) for i in range(4)]  # ECENet reads every stage
    features = Features(pyramid[0], pyramid, (32, 32))
    targets = torch.randint(0, 5, (2, 32, 32))
    targets[:, :8] = 255  # a quarter ignored
    losses = {}
    for average in ("labelled", "all", None):
        torch.manual_seed(1)
        head = build_classifier(name, num_classes=5, in_channels=32,
                                **({} if average is None else {"loss_average": average})).eval()
        losses[average] = head(features, targets).losses
    assert losses[None]["ce"].item() == losses[code_average]["ce"].item()
    torch.testing.assert_close(losses["all"]["ce"], 0.75 * losses["labelled"]["ce"])
    for term in set(losses["all"]) - {"ce"}:  # every other term is its own, whatever the CE's average
        torch.testing.assert_close(losses["all"][term], losses["labelled"][term])
    with pytest.raises(InputError, match="loss_average='mean'; expected one of: labelled, all"):
        build_classifier(name, num_classes=5, in_channels=32, loss_average="mean")


class _BufferHead(PixelClassifier):
    def __init__(self, num_classes, in_channels, ignore_index=255):
        super().__init__(num_classes, in_channels, ignore_index)
        self.register_buffer("prototypes", torch.zeros(num_classes, 3, in_channels))
        self.norm = nn.BatchNorm2d(in_channels)
        self.teacher = nn.Linear(in_channels, in_channels)

    def training_only_modules(self):
        return {"teacher": self.teacher}


def test_accounting_separates_nonlearnable_state_from_norm_statistics():
    head = _BufferHead(4, 8)
    assert set(head.nonlearnable_state()) == {"prototypes"}
    assert head.nonlearnable_state()["prototypes"].shape == (4, 3, 8)
    assert set(head.training_only_modules()) == {"teacher"}
    assert sum(p.numel() for p in head.learnable_parameters()) == 2 * 8 + 8 * 8 + 8


def test_register_rejects_duplicates_and_non_classifiers():
    with pytest.raises(ValueError, match="already registered"):
        register_classifier("softmax")(_BufferHead)
    with pytest.raises(TypeError, match="not a PixelClassifier subclass"):
        register_classifier("not_a_head")(nn.Linear)
