import pytest
import torch

from backbones import Features
from classifiers import build_classifier
from classifiers.ssa import boundary_mask
from harness.errors import InputError


def _features(batch=2, dim=32, size=12):
    pixel = torch.randn(batch, dim, size, size)
    return Features(pixel, [pixel], (size * 4, size * 4))


def _targets(batch=2, classes=6, size=48, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, (batch, size // 8, size // 8), generator=gen).repeat_interleave(8, 1).repeat_interleave(8, 2)


@pytest.mark.parametrize("options", [{}, {"logit": "cosine"}, {"position_encoding": "sinusoidal"},
                                     {"position_encoding": "learnable"}, {"loss_weights": "code"},
                                     {"loss_resolution": "label"}])
@pytest.mark.parametrize("classes, size", [(6, 12), (150, 10)])
def test_shapes_and_finite_named_losses(options, classes, size):
    head = build_classifier("ssa", num_classes=classes, in_channels=32, **options)
    features = _features(size=size)
    assert head.eval()(features).logits.shape == (2, classes, size, size)
    losses = head.train()(features, _targets(classes=classes, size=size * 4)).losses
    assert set(losses) == {"ce", "dice", "teacher_ce", "teacher_dice", "rd", "sd", "pd"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())


def test_eval_forward_never_runs_the_teacher():
    head = build_classifier("ssa", num_classes=6, in_channels=32)
    calls = []
    for module in head.teacher.modules():
        module.register_forward_hook(lambda *_: calls.append(1))
    head.eval()(_features())
    head.train()(_features())  # no targets: inference work only
    assert calls == []
    head.train()(_features(), _targets())
    assert calls  # the teacher does run when training with targets


def test_parameter_accounting_formula():
    k, d = 150, 64
    head = build_classifier("ssa", num_classes=k, in_channels=d)
    training_only = {id(p) for m in head.training_only_modules().values() for p in m.parameters()}
    inference = sum(p.numel() for p in head.parameters() if id(p) not in training_only)
    teacher = sum(p.numel() for p in head.parameters() if id(p) in training_only)
    assert inference == 2 * k * d + k + 4 * d * d + 12 * d
    assert teacher == 4 * d * d + 2 * d


@pytest.mark.parametrize("resolution", ["head", "label"])
def test_ignore_pixels_change_no_loss_term(resolution):
    torch.manual_seed(0)
    head = build_classifier("ssa", num_classes=6, in_channels=32, ignore_index=7, loss_resolution=resolution).train()
    features, targets = _features(), _targets()
    targets[:, :16] = 7
    first = head(features, targets).losses
    # Any ignore value works the same (the public code hard-codes 255).
    same = build_classifier("ssa", num_classes=6, in_channels=32, ignore_index=255, loss_resolution=resolution).train()
    same.load_state_dict(head.state_dict())
    second = same(features, torch.where(targets == 7, 255, targets)).losses
    for name in first:
        torch.testing.assert_close(first[name], second[name])
    relabelled = targets.clone()
    relabelled[:, :16] = 3  # the same pixels labelled: the losses change
    assert not torch.allclose(head(features, relabelled).losses["ce"], first["ce"])
    all_ignored = head(features, torch.full_like(targets, 7)).losses
    assert all(torch.isfinite(v) for v in all_ignored.values())
    assert all_ignored["ce"].item() == 0.0 and all_ignored["rd"].item() == 0.0


def test_boundary_mask_on_a_hand_made_label_map():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :, 4:] = 1
    labels[0, 0, 0] = 255
    edge = boundary_mask(labels, edge_size=4, ignore_index=255)[0]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:, 2:6] = True  # within 2 columns of the 0|1 edge
    expected[:3, :3] = True  # around the ignore pixel
    expected[0, 0] = False  # the ignore pixel itself is never a boundary pixel
    assert torch.equal(edge, expected)
    assert not boundary_mask(torch.full((1, 5, 5), 2), 4, 255).any()


def test_every_inference_parameter_gets_a_gradient():
    head = build_classifier("ssa", num_classes=6, in_channels=32).train()
    losses = head(_features(), _targets()).losses
    sum(losses.values()).backward()
    teacher = {id(p) for p in head.teacher.parameters()}
    assert [n for n, p in head.named_parameters() if id(p) not in teacher and (p.grad is None or p.grad.abs().sum() == 0)] == []
    assert all(p.grad is not None for p in head.teacher.parameters())  # trained by L_g


@pytest.mark.parametrize("key, value", [("loss_weights", "mine"), ("logit", "l2"), ("position_encoding", "rope"),
                                        ("loss_resolution", "input")])
def test_bad_options_are_rejected(key, value):
    with pytest.raises(InputError, match=f"ssa: {key}={value!r}"):
        build_classifier("ssa", num_classes=3, in_channels=8, **{key: value})


def test_code_loss_weights_scale_the_distillation_terms():
    torch.manual_seed(0)
    paper = build_classifier("ssa", num_classes=6, in_channels=32)
    code = build_classifier("ssa", num_classes=6, in_channels=32, loss_weights="code")
    code.load_state_dict(paper.state_dict())
    features, targets = _features(), _targets()
    a, b = paper.train()(features, targets).losses, code.train()(features, targets).losses
    torch.testing.assert_close(b["sd"], 10 * a["sd"])
    torch.testing.assert_close(b["pd"], 0.4 * a["pd"])
    torch.testing.assert_close(b["rd"], a["rd"])
