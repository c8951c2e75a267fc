"""ProtoSeg speed, run on demand: ``python -m pytest tests/benchmarks -s``.

Timings go to pytest-benchmark's table and, as same-process ratios, to each
benchmark's ``extra_info`` and stdout. Assertions check results, never time.
"""

import torch
import torch.nn.functional as F
from reference_protoseg import per_class_cluster_and_update
from timing import interleaved_medians

from classifiers.protoseg import class_sinkhorn, momentum_update
from harness.config import RunConfig, apply_overrides
from harness.modeling import build_segmentor


def _batched(prototypes, embeddings, own, labels, momentum):
    """embeddings [D, N] and own-class cosines [K, N]: the layouts the head's forward holds."""
    assigned = class_sinkhorn(own, labels, prototypes.shape[0]).max(dim=0).indices
    index = labels * prototypes.shape[1] + assigned
    return assigned, momentum_update(prototypes, embeddings, index, momentum)


def test_clustering_and_update_batched_vs_per_class_loop(benchmark):
    """C=150 classes, K=10, 10,000 pixels per class (1.5 M pixels), D=64.

    Each side gets its inputs in the layout its own forward produces: the public code
    holds pixel-major embeddings [N, D] and scores [N, K] (its einsum 'nd,kmd->nmk'),
    segheads' head channel-major embeddings [D, N] and cosines [K, N] (rows of its
    [C*K, HW] map). Neither side's layout change is timed.
    """
    classes, k, per_class, dim = 150, 10, 10_000, 64
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(per_class)[torch.randperm(classes * per_class, generator=gen)]
    embeddings = F.normalize(torch.randn(labels.numel(), dim, generator=gen), dim=1)
    prototypes = F.normalize(torch.randn(classes, k, dim, generator=gen), dim=-1)
    own = torch.cat([(e[:, None, :] * prototypes[l]).sum(-1) for e, l in zip(embeddings.split(100_000), labels.split(100_000))])

    channel_major = (embeddings.t().contiguous(), own.t().contiguous())
    batched_args = (prototypes, channel_major[0], channel_major[1], labels, 0.999)
    assigned, updated = _batched(*batched_args)
    ref_assigned, ref_updated = per_class_cluster_and_update(prototypes, embeddings, own, labels, 0.999)
    assert (assigned == ref_assigned).float().mean() > 0.999  # float32 ties may differ in a handful of pixels
    torch.testing.assert_close(updated, ref_updated, atol=1e-5, rtol=0)

    median = interleaved_medians({
        "loop": lambda: per_class_cluster_and_update(prototypes, embeddings, own, labels, 0.999),
        "batched": lambda: _batched(*batched_args),
    }, rounds=5, warmup=1)
    loop, batched = median["loop"], median["batched"]
    benchmark.extra_info.update(loop_s=loop, batched_s=batched, speedup=loop / batched)
    print(f"\nclustering+update: per-class loop {loop * 1e3:.0f} ms, batched {batched * 1e3:.0f} ms, "
          f"speed-up {loop / batched:.1f}x")
    benchmark.pedantic(_batched, args=batched_args, rounds=3, iterations=1)


def test_inference_cost_against_softmax_and_the_similarity_product(benchmark):
    """ResNet-50 + mlp neck, C=150, D=256, 512x512, batch 1, logits at the head's resolution;
    both presets (``code`` adds the projection conv-ReLU-conv and two LayerNorms)."""
    def model(classifier, **hparams):
        overrides = ["model.backbone=resnet50", "model.embed_dim=256", f"model.classifier={classifier}"]
        cfg = apply_overrides(RunConfig(), overrides + [f"model.classifier_kwargs.{k}={v}" for k, v in hparams.items()])
        torch.manual_seed(0)
        return build_segmentor(cfg, 150, 255).eval()

    models = {"softmax": model("softmax")}
    for preset in ("code", "paper"):
        for k in (1, 10):
            models[f"{preset}_k{k}"] = model("protoseg", preset=preset, num_prototypes=k)
    for name, m in models.items():  # same encoder weights everywhere
        m.backbone.load_state_dict(models["softmax"].backbone.state_dict())
        m.neck.load_state_dict(models["softmax"].neck.state_dict())
    images = torch.rand(1, 3, 512, 512) * 255
    similarity_inputs = (torch.randn(150 * 10, 256), torch.randn(1, 256, 128 * 128))

    def infer(model):
        with torch.inference_mode():
            model(images)

    candidates = {name: (lambda m=m: infer(m)) for name, m in models.items()}
    candidates["similarity"] = lambda: torch.matmul(*similarity_inputs)
    median = interleaved_medians(candidates, rounds=7, warmup=2)
    ratios = {}
    for preset in ("code", "paper"):
        ratios[f"{preset}_k1_over_softmax"] = median[f"{preset}_k1"] / median["softmax"]
        ratios[f"{preset}_k10_extra_over_similarity"] = (median[f"{preset}_k10"] - median["softmax"]) / median["similarity"]
    benchmark.extra_info.update({f"{n}_s": v for n, v in median.items()}, **ratios)
    print("\n" + ", ".join(f"{n} {v * 1e3:.1f} ms" for n, v in median.items())
          + "; " + ", ".join(f"{n} {v:.3f}" for n, v in ratios.items()))
    with torch.inference_mode():
        logits = models["code_k10"](images).logits
    assert logits.shape == (1, 150, 128, 128) and torch.isfinite(logits).all()
    with torch.inference_mode():
        benchmark.pedantic(models["code_k10"], args=(images,), rounds=3, iterations=1)
