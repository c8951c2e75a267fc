import pytest
import torch
import torch.nn.functional as F

from backbones import Features
from classifiers import build_classifier
from classifiers.protoseg import class_sinkhorn, momentum_update, sinkhorn
from harness.errors import InputError
from reference_protoseg import algorithm1, per_class_cluster_and_update


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
                            assignment=assignment).train()
    torch.manual_seed(0)
    for _ in range(steps):
        head(*batch(side))
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
    head = build_classifier("protoseg", num_classes=3, in_channels=32, num_prototypes=4)
    features, labels = batch()
    before = head.prototypes.clone()
    head.eval()
    out = head(features, labels)
    assert set(out.losses) == {"ce", "ppc", "ppd"} and all(torch.isfinite(v) for v in out.losses.values())
    assert torch.equal(head.prototypes, before)
    head.train()
    logits = head(features).logits  # no targets: inference only, no clustering
    assert logits.shape == (1, 3, 16, 16) and torch.equal(head.prototypes, before)
    unweighted = build_classifier("protoseg", num_classes=3, in_channels=32, num_prototypes=4,
                                  ppc_weight=1.0, ppd_weight=1.0)
    unweighted.prototypes.copy_(before)
    ref = unweighted.eval()(features, labels).losses
    torch.testing.assert_close(out.losses["ppc"], 0.01 * ref["ppc"])
    head(features, labels)
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


def test_losses_and_update_equal_a_pixel_major_computation():
    """The head works on the [B, C*K, HW] map; the equations written pixel by pixel give the same."""
    torch.manual_seed(5)
    c, k, d = 4, 3, 8
    head = build_classifier("protoseg", num_classes=c, in_channels=d, num_prototypes=k, momentum=0.9).train()
    before = head.prototypes.clone()
    pixel = torch.randn(2, d, 5, 6)
    labels = torch.randint(0, c, (2, 5, 6))
    labels[0, :2] = 255
    losses = head(Features(pixel, [pixel], (5, 6)), labels).losses

    x = F.normalize(pixel, dim=1).permute(0, 2, 3, 1).reshape(-1, d)
    y = labels.flatten()
    x, y = x[y != 255], y[y != 255]
    cosines = x @ before.reshape(-1, d).t()  # [N, C*K]
    own = cosines.view(-1, c, k)[torch.arange(y.numel()), y]
    assigned = torch.zeros_like(y)
    for cls in y.unique():
        assigned[y == cls] = sinkhorn(own[y == cls]).argmax(1)
    target = y * k + assigned
    torch.testing.assert_close(losses["ppc"], 0.01 * F.cross_entropy(cosines / 0.1, target))
    torch.testing.assert_close(losses["ppd"], 0.01 * (1 - own.gather(1, assigned[:, None])).pow(2).mean())
    torch.testing.assert_close(head.prototypes, per_class_cluster_and_update(before, x, own, y, 0.9)[1])


def test_inference_is_max_cosine_over_each_class_prototypes():
    head = build_classifier("protoseg", num_classes=2, in_channels=8, num_prototypes=3).eval()
    pixel = torch.randn(1, 8, 4, 4)
    logits = head(Features(pixel, [], (16, 16))).logits
    expected = torch.einsum("dn,ckd->ckn", F.normalize(pixel.flatten(2)[0], dim=0), head.prototypes).amax(1)
    torch.testing.assert_close(logits.flatten(2)[0], expected)


def test_ignored_pixels_are_excluded_and_update_on_correct_filters():
    _, batch = _synthetic()
    features, labels = batch()
    head = build_classifier("protoseg", num_classes=3, in_channels=32, num_prototypes=4).train()
    before = head.prototypes.clone()
    out = head(features, torch.full_like(labels, 255))
    assert all(v.item() == 0 for v in out.losses.values())
    assert torch.equal(head.prototypes, before)
    picky = build_classifier("protoseg", num_classes=3, in_channels=32, num_prototypes=4, update_on="correct").train()
    picky.prototypes.copy_(before)
    wrong = (head(features).logits.argmax(1) + 1) % 3  # every pixel labelled with a class it is not predicted as
    picky(features, wrong)
    assert torch.equal(picky.prototypes, before)


def test_accounting_prototypes_are_state_not_parameters():
    c, d = 150, 64
    proto = build_classifier("protoseg", num_classes=c, in_channels=d)
    softmax = build_classifier("softmax", num_classes=c, in_channels=d)
    assert not any(p is proto.prototypes for p in proto.learnable_parameters())
    assert set(proto.nonlearnable_state()) == {"prototypes"}
    assert proto.nonlearnable_state()["prototypes"].shape == (c, 10, d)
    assert "prototypes" in proto.state_dict()
    count = lambda head: sum(p.numel() for p in head.learnable_parameters())  # noqa: E731
    assert count(softmax) - count(proto) == c * d + c
    projected = build_classifier("protoseg", num_classes=c, in_channels=d, projection=True)
    assert set(projected.nonlearnable_state()) == {"prototypes"}  # BN statistics are not prototypes
    assert count(projected) == 2 * (d * d + d) + 2 * d


def test_public_code_class_score_layernorm_is_learnable_and_applied_at_inference():
    head = build_classifier("protoseg", num_classes=5, in_channels=8, num_prototypes=2, class_score_norm="layernorm")
    assert sum(p.numel() for p in head.learnable_parameters()) == 2 * 5
    logits = head.eval()(Features(torch.randn(2, 8, 3, 3), [], (12, 12))).logits
    torch.testing.assert_close(logits.mean(1), torch.zeros(2, 3, 3), atol=1e-5, rtol=0)  # normalised over classes


@pytest.mark.parametrize("key, value", [("assignment", "sample"), ("update_on", "some"), ("num_prototypes", 0),
                                        ("class_score_norm", "batchnorm")])
def test_bad_options_are_rejected(key, value):
    with pytest.raises(InputError, match=f"protoseg: {key}={value!r}"):
        build_classifier("protoseg", num_classes=3, in_channels=8, **{key: value})
