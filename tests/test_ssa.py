import pytest
import torch
import torch.nn.functional as F

from backbones import Features
from classifiers import build_classifier, resolve_classifier_kwargs
from classifiers.ssa import (
    SSAClassifier,
    _dice,
    _relations,
    _response_distillation,
    _spatial_distillation,
    boundary_mask,
)
from harness.errors import InputError


def _features(batch=2, dim=32, size=12):
    pixel = torch.randn(batch, dim, size, size)
    return Features(pixel, [pixel], (size * 4, size * 4))


def _targets(batch=2, classes=6, size=48, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, (batch, size // 8, size // 8), generator=gen).repeat_interleave(8, 1).repeat_interleave(8, 2)


_TERMS = {"ce", "dice", "teacher_ce", "teacher_dice", "rd", "sd", "pd"}


@pytest.mark.parametrize("options", [{}, {"preset": "paper"}, {"position_encoding": "sinusoidal"},
                                     {"position_encoding": "learnable"}, {"loss_resolution": "head"},
                                     {"preset": "paper", "logit": "cosine", "adapter": "mlp"}])
@pytest.mark.parametrize("classes, size", [(6, 12), (150, 10)])
def test_shapes_and_finite_named_losses(options, classes, size):
    head = build_classifier("ssa", num_classes=classes, in_channels=32, **options)
    features = _features(size=size)
    assert head.eval()(features).logits.shape == (2, classes, size, size)
    losses = head.train()(features, _targets(classes=classes, size=size * 4)).losses
    assert set(losses) == _TERMS | ({"coarse_ce"} if head.options["coarse_ce"] else set())
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


@pytest.mark.parametrize("preset, adapters, projection", [("code", 3, 1), ("paper", 4, 0)])
def test_parameter_accounting_formula(preset, adapters, projection):
    k, d = 150, 64
    head = build_classifier("ssa", num_classes=k, in_channels=d, preset=preset)
    training_only = {id(p) for m in head.training_only_modules().values() for p in m.parameters()}
    inference = sum(p.numel() for p in head.parameters() if id(p) not in training_only)
    teacher = sum(p.numel() for p in head.parameters() if id(p) in training_only)
    adapter = adapters * d * d + 2 * d  # phi_s + phi_p: code MLPs 2(2D*D/2 + D/2*D + D), paper Linears 2(2D*D + D)
    assert inference == 2 * k * d + k + 10 * d + adapter + projection * d * d
    assert teacher == adapter + projection * d * d  # the teacher's own phi_s, phi_p and W


def _student_by_hand(head, pixel):
    """The code's student forward, from the module docstring: M_c = conv_seg(S_f) (eval: no
    dropout), S_c soft-mass means, P_c = Softmax_HW(M_c) P_f, S_p = phi_s([S_c, S]),
    P_p = phi_p([P, P_c]), logits 15 cos(S_f + P_f, W(S_p + P_p))."""
    b, d, h, w = pixel.shape
    weight, bias = head.coarse.weight.flatten(1), head.coarse.bias
    p_f = F.conv2d(pixel, head.position.conv.weight, head.position.conv.bias, padding=1, groups=d)
    s, p = pixel.flatten(2), p_f.flatten(2)  # [B, D, HW]
    coarse = torch.einsum("kd,bdn->bkn", weight, s) + bias[:, None]
    soft = coarse.softmax(1)
    semantic_centres = torch.einsum("bkn,bdn->bkd", soft, s) / soft.sum(-1, keepdim=True)
    spatial_centres = torch.einsum("bkn,bdn->bkd", coarse.softmax(-1), p)
    semantic = head.adapter.semantic(torch.cat([semantic_centres, weight.expand(b, -1, -1)], -1))
    spatial = head.adapter.spatial(torch.cat([head.basis.expand(b, -1, -1), spatial_centres], -1))
    centres = F.normalize((semantic + spatial) @ head.adapter.project.weight.t(), dim=-1)
    return 15 * torch.einsum("bkd,bdn->bkn", centres, F.normalize(s + p, dim=1)).view(b, -1, h, w)


def test_code_preset_logits_are_scaled_cosines_to_projected_prototypes():
    torch.manual_seed(1)
    head = build_classifier("ssa", num_classes=5, in_channels=16).eval()
    pixel = torch.randn(2, 16, 6, 7)
    logits = head(Features(pixel, [pixel], (24, 28))).logits
    torch.testing.assert_close(logits, _student_by_hand(head, pixel))
    assert logits.abs().max() <= 15 + 1e-4
    # the code's adapters: Linear(2D, D/2, no bias) - ReLU - Linear(D/2, D); teacher with its own W
    first, _, second = head.adapter.semantic
    assert (first.in_features, first.out_features, first.bias, second.out_features) == (32, 8, None, 16)
    assert head.teacher.project is not head.adapter.project and head.adapter.project.bias is None
    paper = build_classifier("ssa", num_classes=5, in_channels=16, preset="paper")
    assert isinstance(paper.adapter.semantic, torch.nn.Linear) and paper.adapter.project is None


def test_code_preset_coarse_mask_learns_from_its_own_ce_after_dropout():
    torch.manual_seed(2)
    head = build_classifier("ssa", num_classes=6, in_channels=32).train()
    losses = head(_features(), _targets()).losses
    losses["coarse_ce"].backward()
    assert head.coarse.weight.grad.abs().sum() > 0
    assert "coarse_ce" not in build_classifier("ssa", num_classes=6, in_channels=32, preset="paper")(
        _features(), _targets()).losses
    assert isinstance(head.dropout, torch.nn.Dropout2d) and head.dropout.p == 0.1
    features = _features()
    first, second = (head(features).logits for _ in range(2))
    assert not torch.equal(first, second)  # dropout on S_f before M_c in training
    head.eval()
    assert torch.equal(head(features).logits, head(features).logits)


def test_position_basis_is_standard_normal():
    basis = build_classifier("ssa", num_classes=150, in_channels=64).basis
    assert abs(basis.std().item() - 1) < 0.05 and abs(basis.mean().item()) < 0.05


def _rd_by_hand(student, teacher, labels, edge, share):
    """The code's get_distill_loss, class by class."""
    t_prob = teacher.softmax(1)
    onehot = F.one_hot(labels.clamp(max=student.shape[1] - 1), student.shape[1]).permute(0, 3, 1, 2).float()
    target = share * onehot + (1 - share) * t_prob
    loss = -(target * student.log_softmax(1)).sum(1)
    entropy = -(t_prob * torch.log(t_prob)).sum(1) * (labels != 255)
    terms = []
    for cls in labels.unique():
        if cls == 255:
            continue
        mask = (labels == cls).float()
        inside = [entropy * mask * edge, entropy * mask * (1 - edge)]
        terms.append(sum((loss * m).sum() / (m.sum() + 1e-12) for m in inside) / 2)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("share", [0.5, 0.0])
def test_response_distillation_equals_the_code_class_by_class(share):
    torch.manual_seed(3)
    student, teacher = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    labels = torch.randint(0, 4, (2, 16, 16))
    labels[labels == 2] = 3  # an absent class
    labels[0, :3] = 255
    edge = boundary_mask(labels, 3).float()
    assert edge.sum() > 0
    onehot = F.one_hot(labels.clamp(max=3), 4).permute(0, 3, 1, 2).float() * (labels != 255)[:, None]
    torch.testing.assert_close(_response_distillation(student, teacher, onehot, edge, share),
                               _rd_by_hand(student, teacher, labels, edge, share))


@pytest.mark.parametrize("edge_size, rows, cols", [(3, (5, 11), (6, 9)), (4, (5, 12), (6, 10))])
def test_boundary_is_one_pixel_edges_in_a_frame_dilated_by_the_edge_size(edge_size, rows, cols):
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, :, 8:] = 1  # edge pixels: column 7; the 6-cell frame keeps rows and columns 6..9
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[rows[0]:rows[1], cols[0]:cols[1]] = True  # cv2.dilate: dst(x) = max src(x + i - k // 2), i < k
    assert torch.equal(boundary_mask(labels, edge_size)[0], expected)
    assert not boundary_mask(torch.full((1, 16, 16), 2), 3).any()
    assert not boundary_mask(labels[:, :12, :12], 3).any()  # a 12-cell map is all frame, as in the code


def test_sigmoid_dice_over_present_image_class_masks():
    logits = torch.tensor([[[[2.0, -1.0]], [[0.5, 0.0]], [[-3.0, 1.0]]]])  # [1, 3, 1, 2]
    labels = torch.tensor([[[0, 1]]])  # class 2 absent
    onehot = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    prob = logits.sigmoid()
    by_hand = [1 - (2 * (prob[0, c] * onehot[0, c]).sum() + 1) / (prob[0, c].sum() + onehot[0, c].sum() + 1)
               for c in (0, 1)]
    torch.testing.assert_close(_dice(logits, labels, 255), sum(by_hand) / 2)
    # at label resolution: the same as resizing every class's logits first
    torch.manual_seed(8)
    logits, labels = torch.randn(2, 6, 4, 4), torch.randint(0, 4, (2, 16, 16))
    labels[0, :3] = 255
    full = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=True).sigmoid()
    valid = (labels != 255)[:, None]
    onehot = F.one_hot(labels.clamp(max=5), 6).permute(0, 3, 1, 2).float() * valid
    prob = full * valid
    mass = onehot.sum((2, 3))
    loss = 1 - (2 * (prob * onehot).sum((2, 3)) + 1) / (prob.sum((2, 3)) + mass + 1)
    torch.testing.assert_close(_dice(logits, labels, 255), loss[mass > 0].mean())


def test_semantic_relations_use_scaled_cosines_with_detached_keys():
    torch.manual_seed(4)
    prototypes = torch.randn(2, 5, 8, requires_grad=True)
    weights = torch.randn(2, 5, 5)
    (_relations(prototypes, "cosine") * weights).sum().backward()
    unit = F.normalize(prototypes, dim=-1)
    by_hand = (15 * unit @ unit.transpose(1, 2)).softmax(-1)
    torch.testing.assert_close(_relations(prototypes, "cosine"), by_hand)
    query_side = prototypes.detach().clone().requires_grad_(True)
    q = F.normalize(query_side, dim=-1)
    ((15 * q @ unit.detach().transpose(1, 2)).softmax(-1) * weights).sum().backward()
    torch.testing.assert_close(prototypes.grad, query_side.grad)
    torch.testing.assert_close(_relations(prototypes, "dot"), (prototypes @ prototypes.transpose(1, 2)).softmax(-1))


def test_code_spatial_distillation_has_no_gradient_when_student_equals_teacher():
    torch.manual_seed(5)
    teacher = torch.randn(2, 6, 16)
    grads = {}
    for direction in ("teacher_to_student", "student_to_teacher"):
        student = teacher.clone().requires_grad_(True)
        _spatial_distillation(student, teacher, direction).backward()
        grads[direction] = student.grad.norm().item()
    assert grads["teacher_to_student"] < 1e-6 < 1e-3 < grads["student_to_teacher"]
    student = torch.randn(2, 6, 16)
    by_hand = -(teacher.softmax(-1) * student.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(_spatial_distillation(student, teacher, "teacher_to_student"), by_hand)


def test_teacher_centres_of_absent_classes_fall_back_to_the_fixed_prototypes():
    torch.manual_seed(6)
    head = build_classifier("ssa", num_classes=4, in_channels=16).train()
    pixel = torch.randn(2, 16, 4, 4)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[1, :2] = 1  # classes 2 and 3 absent from the batch; class 1 absent from image 0
    flat_s = pixel.flatten(2).transpose(1, 2)
    p_f = head.position(pixel)
    flat_p = p_f.flatten(2).transpose(1, 2)
    prototypes, basis = head.coarse.weight.flatten(1), head.basis
    onehot = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    _, semantic, spatial = head._teacher(pixel + p_f, flat_s, flat_p, prototypes, onehot)
    phi_s, phi_p = head.teacher.semantic, head.teacher.spatial
    for k in (2, 3):
        torch.testing.assert_close(semantic[0, k], phi_s(torch.cat([prototypes[k], prototypes[k]])))
    class_0 = flat_s[labels.flatten(1) == 0].mean(0)
    torch.testing.assert_close(semantic[0, 0], phi_s(torch.cat([class_0, prototypes[0]])))
    torch.testing.assert_close(spatial[0, 1], phi_p(torch.cat([basis[1], basis[1]])))
    class_1 = flat_p[1][labels[1].flatten() == 1].mean(0)
    torch.testing.assert_close(spatial[1, 1], phi_p(torch.cat([class_1, basis[1]])))


def test_code_loss_placement_rd_at_head_resolution_the_rest_at_label_resolution():
    torch.manual_seed(7)
    label_side = build_classifier("ssa", num_classes=6, in_channels=32).train()
    head_side = build_classifier("ssa", num_classes=6, in_channels=32, loss_resolution="head").train()
    head_side.load_state_dict(label_side.state_dict())
    features, targets = _features(size=16), _targets(size=64)
    targets[:, ::4] = 5  # one-pixel stripes that nearest sampling to the head's resolution loses
    torch.manual_seed(0)
    a = label_side(features, targets).losses
    torch.manual_seed(0)
    b = head_side(features, targets).losses
    for same in ("ce", "rd", "sd", "pd"):
        torch.testing.assert_close(a[same], b[same])
    for differ in ("dice", "teacher_ce", "teacher_dice", "coarse_ce"):
        assert not torch.allclose(a[differ], b[differ])


def test_code_loss_weights_scale_the_distillation_terms():
    torch.manual_seed(0)
    unit = build_classifier("ssa", num_classes=6, in_channels=32, sd_weight=1.0, pd_weight=1.0).eval()
    code = build_classifier("ssa", num_classes=6, in_channels=32).eval()
    code.load_state_dict(unit.state_dict())
    features, targets = _features(), _targets()
    a, b = unit(features, targets).losses, code(features, targets).losses
    torch.testing.assert_close(b["sd"], 10 * a["sd"])
    torch.testing.assert_close(b["pd"], 0.4 * a["pd"])
    torch.testing.assert_close(b["rd"], a["rd"])
    paper = build_classifier("ssa", num_classes=6, in_channels=32, preset="paper")
    assert (paper.options["rd_weight"], paper.options["sd_weight"], paper.options["pd_weight"]) == (1, 1, 1)
    assert (paper.options["edge_size"], code.options["edge_size"]) == (4, 3)
    assert (paper.options["rd_onehot"], code.options["rd_onehot"]) == (0, 0.5)


@pytest.mark.parametrize("resolution", ["head", "label"])
def test_ignore_pixels_change_no_loss_term(resolution):
    torch.manual_seed(0)
    head = build_classifier("ssa", num_classes=6, in_channels=32, ignore_index=7, loss_resolution=resolution).eval()
    features, targets = _features(), _targets()
    targets[:, :16] = 7
    first = head(features, targets).losses
    # Any ignore value works the same (the public code hard-codes 255).
    same = build_classifier("ssa", num_classes=6, in_channels=32, ignore_index=255, loss_resolution=resolution).eval()
    same.load_state_dict(head.state_dict())
    second = same(features, torch.where(targets == 7, 255, targets)).losses
    for name in first:
        torch.testing.assert_close(first[name], second[name])
    relabelled = targets.clone()
    relabelled[:, :16] = 3  # the same pixels labelled: the losses change
    assert not torch.allclose(head(features, relabelled).losses["ce"], first["ce"])
    all_ignored = head(features, torch.full_like(targets, 7)).losses
    assert all(torch.isfinite(v) for v in all_ignored.values())
    assert all_ignored["ce"].item() == 0.0 and all_ignored["rd"].item() == 0.0 and all_ignored["dice"].item() == 0.0


def test_every_inference_parameter_gets_a_gradient():
    head = build_classifier("ssa", num_classes=6, in_channels=32).train()
    losses = head(_features(), _targets()).losses
    sum(losses.values()).backward()
    teacher = {id(p) for p in head.teacher.parameters()}
    assert [n for n, p in head.named_parameters() if id(p) not in teacher and (p.grad is None or p.grad.abs().sum() == 0)] == []
    assert all(p.grad is not None for p in head.teacher.parameters())  # trained by L_g


def test_presets_resolve_to_named_options_that_override_them():
    assert resolve_classifier_kwargs("ssa", {}) == {"preset": "code", **SSAClassifier.PRESETS["code"]}
    resolved = resolve_classifier_kwargs("ssa", {"preset": "paper", "edge_size": 5})
    assert resolved["edge_size"] == 5 and resolved["logit"] == "dot"
    assert build_classifier("ssa", num_classes=3, in_channels=8, **resolved).options == resolved


@pytest.mark.parametrize("key, value", [("preset", "mine"), ("logit", "l2"), ("position_encoding", "rope"),
                                        ("loss_resolution", "input"), ("adapter", "conv"), ("sd_similarity", "l1"),
                                        ("pd_direction", "both"), ("rd_onehot", 2.0), ("edge_size", 0)])
def test_bad_options_are_rejected(key, value):
    with pytest.raises(InputError, match=f"ssa: {key}={value!r}"):
        build_classifier("ssa", num_classes=3, in_channels=8, **{key: value})
