import pytest
import torch
import torch.nn.functional as F
from reference_protoseg import algorithm1, per_class_cluster_and_update

from backbones import Features
from classifiers import build_classifier, resolve_classifier_kwargs
from classifiers.protoseg import ProtoSegClassifier, class_sinkhorn, momentum_update, sinkhorn
from harness.errors import InputError


def test_sinkhorn_equals_algorithm1_transposed():
    torch.manual_seed(0)
    for n, k in [(50, 5), (7, 10), (300, 3)]:
        scores = torch.rand(n, k, dtype=torch.float64) * 2 - 1
        torch.testing.assert_close(sinkhorn(scores, iters=3, kappa=0.05), algorithm1(scores.t()).t())


def test_sinkhorn_rows_sum_to_one_and_columns_to_n_over_k():
    torch.manual_seed(1)
    scores = torch.rand(400, 8) * 2 - 1
    q = sinkhorn(scores)
    torch.testing.assert_close(q.sum(1), torch.ones(400))
    torch.testing.assert_close(q.sum(0), torch.full((8,), 50.0), rtol=0.15, atol=0)
    torch.testing.assert_close(sinkhorn(scores, iters=200).sum(0), torch.full((8,), 50.0), rtol=1e-3, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_stays_finite(dtype):
    torch.manual_seed(2)
    scores = (torch.rand(1000, 10) * 2 - 1).to(dtype)
    # The naive algorithm overflows: exp(1 / 0.05) is past fp16's range.
    assert not torch.isfinite(torch.exp(scores / 0.05)).all() or dtype == torch.bfloat16
    q = sinkhorn(scores)
    assert q.dtype == dtype and torch.isfinite(q).all()
    torch.testing.assert_close(q.float().sum(1), torch.ones(1000), atol=2e-2, rtol=0)
    assert torch.isfinite(sinkhorn(scores * 60)).all()


def test_class_batched_sinkhorn_equals_per_class_runs():
    torch.manual_seed(3)
    labels = torch.randint(0, 6, (500,))
    labels[labels == 4] = 5  # an empty class
    scores = torch.rand(500, 4, dtype=torch.float64) * 2 - 1
    q = class_sinkhorn(scores.t(), labels, 6).t()
    for c in labels.unique():
        torch.testing.assert_close(q[labels == c], sinkhorn(scores[labels == c]))


def test_batched_cluster_and_update_equals_the_per_class_loop():
    torch.manual_seed(4)
    prototypes = F.normalize(torch.randn(7, 5, 16, dtype=torch.float64), dim=-1)
    embeddings = F.normalize(torch.randn(900, 16, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, 7, (900,))
    labels[labels == 2] = 3
    own = (embeddings[:, None, :] * prototypes[labels]).sum(-1)
    assigned = class_sinkhorn(own.t(), labels, 7).argmax(0)
    updated = momentum_update(prototypes, embeddings.t(), labels * 5 + assigned, 0.9)
    ref_assigned, ref_updated = per_class_cluster_and_update(prototypes, embeddings, own, labels, 0.9)
    assert torch.equal(assigned, ref_assigned)
    torch.testing.assert_close(updated, ref_updated)
    torch.testing.assert_close(updated[2], prototypes[2])  # no pixel: unchanged


def _synthetic(num_classes=3, sub=4, dim=32, noise=0.08, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(num_classes, sub, dim, generator=gen), dim=-1)

    def batch(side=16):
        labels = torch.randint(0, num_classes, (side * side,), generator=gen)
        which = torch.randint(0, sub, (side * side,), generator=gen)
        x = centres[labels, which] + noise * torch.randn(side * side, dim, generator=gen)
        pixel = x.t().reshape(1, dim, side, side)
        return Features(pixel, [pixel], (side, side)), labels.view(1, side, side)

    return centres, batch


def _train_prototypes(assignment, sub, steps=300, side=24):
    """Online clustering of synthetic embeddings with ``sub`` known sub-centres per class."""
    centres, batch = _synthetic(sub=sub)
    head = build_classifier("protoseg", num_classes=3, in_channels=32, num_prototypes=sub, momentum=0.9,
                            preset="paper", assignment=assignment).train()
    torch.manual_seed(0)
    for _ in range(steps):
        head(*batch(side))
        head.after_optimizer_step()
    protos = head.prototypes
    recovered = torch.einsum("csd,ckd->csk", centres, protos).amax(-1)  # best prototype per true centre
    gram = torch.einsum("ckd,cjd->ckj", protos, protos)
    return recovered, gram[:, ~torch.eye(sub, dtype=torch.bool)].mean()


def test_argmax_assignment_recovers_distinct_sub_centres():
    recovered, mean_cosine = _train_prototypes("argmax", sub=4)
    assert recovered.min() >= 0.9
    assert mean_cosine <= 0.5


def test_public_code_gumbel_assignment_collapses_prototypes():
    _, paper_cosine = _train_prototypes("argmax", sub=10)
    recovered, mean_cosine = _train_prototypes("gumbel", sub=10)
    assert paper_cosine <= 0.1
    assert mean_cosine >= 0.75  # a class's ten prototypes end up close to one vector
    assert recovered.min() < 0.5


def test_losses_named_weighted_and_prototypes_only_move_in_training():
    _, batch = _synthetic()
    head = build_classifier("protoseg", num_classes=3, in_channels=32, num_prototypes=4, preset="paper")
    features, labels = batch()
    before = head.prototypes.clone()
    head.eval()
    out = head(features, labels)
    assert set(out.losses) == {"ce", "ppc", "ppd"} and all(torch.isfinite(v) for v in out.losses.values())
    assert torch.equal(head.prototypes, before)
    head.train()
    logits = head(features).logits  # no targets: inference only, no clustering
    assert logits.shape == (1, 3, 16, 16) and torch.equal(head.prototypes, before)
    unweighted = build_classifier("protoseg", num_classes=3, in_channels=32, num_prototypes=4, preset="paper",
                                  ppc_weight=1.0, ppd_weight=1.0)
    unweighted.prototypes.copy_(before)
    ref = unweighted.eval()(features, labels).losses
    torch.testing.assert_close(out.losses["ppc"], 0.01 * ref["ppc"])
    head(features, labels)
    assert torch.equal(head.prototypes, before)  # gathered; applied once per optimiser step
    head.after_optimizer_step()
    assert not torch.equal(head.prototypes, before)
    torch.testing.assert_close(head.prototypes.norm(dim=-1), torch.ones(3, 4))


def test_training_step_backpropagates_to_the_embeddings_after_the_update():
    _, batch = _synthetic()
    features, labels = batch()
    pixel = features.pixel.clone().requires_grad_(True)
    head = build_classifier("protoseg", num_classes=3, in_channels=32, num_prototypes=4).train()
    losses = head(Features(pixel, [pixel], features.image_size), labels).losses
    sum(losses.values()).backward()
    assert pixel.grad is not None and torch.isfinite(pixel.grad).all() and pixel.grad.abs().sum() > 0


def _embed_by_hand(head, pixel):
    """The pixel embedding written out from the module docstring's table: conv-ReLU-conv
    (``projection``) and the code's l2 along the width, then (``feat_norm``) LayerNorm over
    D, then l2 over D."""
    x = pixel
    if head.projection is not None:
        first, relu, second = head.projection
        x = F.conv2d(F.conv2d(x, first.weight, first.bias).clamp(min=0), second.weight, second.bias)
        x = x / x.pow(2).sum(dim=3, keepdim=True).sqrt()  # each (image, channel, row) along W
    if head.feat_norm is not None:
        norm = head.feat_norm
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), norm.weight, norm.bias).permute(0, 3, 1, 2)
    return F.normalize(x, dim=1)


@pytest.mark.parametrize("preset, tau, ppd_weight", [("paper", 0.1, 0.01), ("code", 1.0, 0.001)])
def test_losses_and_update_equal_a_pixel_major_computation(preset, tau, ppd_weight):
    """The head works on the [B, C*K, HW] map; the equations written pixel by pixel give the
    same, with each preset's PPC temperature and PPD weight (argmax update from all pixels)."""
    torch.manual_seed(5)
    c, k, d = 4, 3, 8
    head = build_classifier("protoseg", num_classes=c, in_channels=d, num_prototypes=k, momentum=0.9, preset=preset,
                            assignment="argmax", update_on="all").train()
    before = head.prototypes.clone()
    pixel = torch.randn(2, d, 5, 6)
    labels = torch.randint(0, c, (2, 5, 6))
    labels[0, :2] = 255
    losses = head(Features(pixel, [pixel], (5, 6)), labels).losses
    head.after_optimizer_step()

    x = _embed_by_hand(head, pixel).detach().permute(0, 2, 3, 1).reshape(-1, d)
    y = labels.flatten()
    x, y = x[y != 255], y[y != 255]
    cosines = x @ before.reshape(-1, d).t()  # [N, C*K]
    own = cosines.view(-1, c, k)[torch.arange(y.numel()), y]
    assigned = torch.zeros_like(y)
    for cls in y.unique():
        assigned[y == cls] = sinkhorn(own[y == cls]).argmax(1)
    target = y * k + assigned
    torch.testing.assert_close(losses["ppc"], 0.01 * F.cross_entropy(cosines / tau, target))
    torch.testing.assert_close(losses["ppd"], ppd_weight * (1 - own.gather(1, assigned[:, None])).pow(2).mean())
    torch.testing.assert_close(head.prototypes, per_class_cluster_and_update(before, x, own, y, 0.9)[1])


def test_code_preset_logits_are_a_layernorm_of_max_cosines_of_projected_normalised_embeddings():
    torch.manual_seed(6)
    head = build_classifier("protoseg", num_classes=5, in_channels=8, num_prototypes=3).eval()
    for param in head.parameters():  # move the affine maps off their identity initialisation
        param.data.add_(0.3 * torch.randn_like(param))
    pixel = torch.randn(2, 8, 4, 4)
    logits = head(Features(pixel, [], (16, 16))).logits
    embeddings = _embed_by_hand(head, pixel).flatten(2)  # [B, D, HW]
    best = torch.einsum("bdn,ckd->bckn", embeddings, head.prototypes).amax(2)  # [B, C, HW]
    expected = F.layer_norm(best.transpose(1, 2), (5,), head.class_norm.weight, head.class_norm.bias).transpose(1, 2)
    torch.testing.assert_close(logits.flatten(2), expected)
    per_pixel = build_classifier("protoseg", num_classes=5, in_channels=8, num_prototypes=3, projection_l2="channels")
    per_pixel.load_state_dict(head.state_dict())
    assert not torch.allclose(per_pixel.eval()(Features(pixel, [], (16, 16))).logits, logits)  # the width axis matters
    # the code's own pieces: projection without BatchNorm, LayerNorm over D, LayerNorm over C
    assert [type(m) for m in head.projection] == [torch.nn.Conv2d, torch.nn.ReLU, torch.nn.Conv2d]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in head.modules())
    assert head.feat_norm.normalized_shape == (8,) and head.class_norm.normalized_shape == (5,)
    paper = build_classifier("protoseg", num_classes=5, in_channels=8, num_prototypes=3, preset="paper").eval()
    assert paper.projection is None and paper.feat_norm is None and paper.class_norm is None
    assert paper(Features(pixel, [], (16, 16))).logits.abs().max() <= 1  # plain cosines (Eq. 6)


def test_code_preset_updates_by_gumbel_sample_from_correct_pixels_only():
    code = build_classifier("protoseg", num_classes=3, in_channels=32, num_prototypes=4)
    assert (code.assignment, code.update_on) == ("gumbel", "correct")
    _, batch = _synthetic()
    features, _ = batch()
    before = code.prototypes.clone()
    wrong = (code.eval()(features).logits.argmax(1) + 1) % 3  # every pixel labelled with a class it is not predicted as
    code.train()(features, wrong)
    code.after_optimizer_step()
    assert torch.equal(code.prototypes, before)
    paper = build_classifier("protoseg", num_classes=3, in_channels=32, num_prototypes=4, preset="paper").train()
    paper.prototypes.copy_(before)
    paper(features, wrong)
    paper.after_optimizer_step()
    assert not torch.equal(paper.prototypes, before)


def test_code_preset_ce_upsamples_with_aligned_corners():
    torch.manual_seed(7)
    head = build_classifier("protoseg", num_classes=4, in_channels=8, num_prototypes=2).eval()
    pixel, labels = torch.randn(1, 8, 5, 5), torch.randint(0, 4, (1, 20, 20))
    ce = head(Features(pixel, [], (20, 20)), labels).losses["ce"]
    logits = head(Features(pixel, [], (20, 20))).logits
    aligned = F.cross_entropy(F.interpolate(logits, size=(20, 20), mode="bilinear", align_corners=True), labels)
    unaligned = F.cross_entropy(F.interpolate(logits, size=(20, 20), mode="bilinear", align_corners=False), labels)
    torch.testing.assert_close(ce, aligned)
    assert not torch.allclose(ce, unaligned)


def test_presets_resolve_to_named_options_that_override_them():
    assert resolve_classifier_kwargs("protoseg", {}) == {"preset": "code", **ProtoSegClassifier.PRESETS["code"]}
    resolved = resolve_classifier_kwargs("protoseg", {"preset": "paper", "tau": 0.5, "num_prototypes": 4})
    assert resolved["tau"] == 0.5 and resolved["ppd_weight"] == 0.01 and resolved["num_prototypes"] == 4
    assert resolve_classifier_kwargs("protoseg", resolved) == resolved  # idempotent
    head = build_classifier("protoseg", num_classes=3, in_channels=8, **resolved)
    assert (head.preset, head.tau, head.num_prototypes) == ("paper", 0.5, 4)
    with pytest.raises(InputError, match="protoseg: preset='text'; expected one of: code, paper"):
        build_classifier("protoseg", num_classes=3, in_channels=8, preset="text")


def test_inference_is_max_cosine_over_each_class_prototypes():
    head = build_classifier("protoseg", num_classes=2, in_channels=8, num_prototypes=3, preset="paper").eval()
    pixel = torch.randn(1, 8, 4, 4)
    logits = head(Features(pixel, [], (16, 16))).logits
    expected = torch.einsum("dn,ckd->ckn", F.normalize(pixel.flatten(2)[0], dim=0), head.prototypes).amax(1)
    torch.testing.assert_close(logits.flatten(2)[0], expected)


def test_ignored_pixels_are_excluded_and_update_on_correct_filters():
    _, batch = _synthetic()
    features, labels = batch()
    head = build_classifier("protoseg", num_classes=3, in_channels=32, num_prototypes=4, preset="paper").train()
    before = head.prototypes.clone()
    out = head(features, torch.full_like(labels, 255))
    assert all(v.item() == 0 for v in out.losses.values())
    assert torch.equal(head.prototypes, before)
    picky = build_classifier("protoseg", num_classes=3, in_channels=32, num_prototypes=4, preset="paper",
                             update_on="correct").train()
    picky.prototypes.copy_(before)
    wrong = (head(features).logits.argmax(1) + 1) % 3  # every pixel labelled with a class it is not predicted as
    picky(features, wrong)
    assert torch.equal(picky.prototypes, before)


def test_accounting_prototypes_are_state_not_parameters():
    c, d = 150, 64
    proto = build_classifier("protoseg", num_classes=c, in_channels=d, preset="paper")
    softmax = build_classifier("softmax", num_classes=c, in_channels=d)
    assert not any(p is proto.prototypes for p in proto.learnable_parameters())
    assert set(proto.nonlearnable_state()) == {"prototypes"}
    assert proto.nonlearnable_state()["prototypes"].shape == (c, 10, d)
    assert "prototypes" in proto.state_dict()
    count = lambda head: sum(p.numel() for p in head.learnable_parameters())  # noqa: E731
    assert count(softmax) - count(proto) == c * d + c
    code = build_classifier("protoseg", num_classes=c, in_channels=d)
    assert set(code.nonlearnable_state()) == {"prototypes"}
    assert count(code) == 2 * (d * d + d) + 2 * d + 2 * c  # projection, LayerNorm(D), LayerNorm(C)


def test_public_code_class_score_layernorm_is_learnable_and_applied_at_inference():
    head = build_classifier("protoseg", num_classes=5, in_channels=8, num_prototypes=2, preset="paper",
                            class_score_norm="layernorm")
    assert sum(p.numel() for p in head.learnable_parameters()) == 2 * 5
    logits = head.eval()(Features(torch.randn(2, 8, 3, 3), [], (12, 12))).logits
    torch.testing.assert_close(logits.mean(1), torch.zeros(2, 3, 3), atol=1e-5, rtol=0)  # normalised over classes


@pytest.mark.parametrize("key, value", [("assignment", "sample"), ("update_on", "some"), ("num_prototypes", 0),
                                        ("class_score_norm", "batchnorm")])
def test_bad_options_are_rejected(key, value):
    with pytest.raises(InputError, match=f"protoseg: {key}={value!r}"):
        build_classifier("protoseg", num_classes=3, in_channels=8, **{key: value})
