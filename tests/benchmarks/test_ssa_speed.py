"""SSA cost against softmax on the full model, run on demand:
``python -m pytest tests/benchmarks -s -k ssa``. Ratios are measured in one process."""

import torch
from timing import interleaved_medians

from harness.config import RunConfig, apply_overrides
from harness.modeling import build_segmentor
from harness.solver import build_optimizer


def _model(classifier, **hparams):
    cfg = apply_overrides(RunConfig(), ["model.backbone=resnet50", "model.embed_dim=256", f"model.classifier={classifier}"]
                          + [f"model.classifier_kwargs.{k}={v}" for k, v in hparams.items()])
    torch.manual_seed(0)
    return build_segmentor(cfg, 150, 255), cfg


def test_ssa_inference_and_training_step_against_softmax(benchmark):
    """ResNet-50 + mlp neck, C=150, D=256, 512x512, batch 1, 2 threads: ``ssa`` at its code
    preset (CE and dice terms at label resolution), ``ssa_head`` with them at the head's
    resolution (where the code's placement spends its time) and ``ssa_paper``."""
    models = {"softmax": _model("softmax"), "ssa": _model("ssa"), "ssa_head": _model("ssa", loss_resolution="head"),
              "ssa_paper": _model("ssa", preset="paper")}
    for name in ("ssa", "ssa_head", "ssa_paper"):
        models[name][0].backbone.load_state_dict(models["softmax"][0].backbone.state_dict())
    images = torch.rand(1, 3, 512, 512) * 255
    # 32x32-pixel blocks of 15 classes, as an ADE20K crop holds 10-20 (the dice terms cost per present class)
    targets = torch.randint(0, 15, (1, 16, 16)).repeat_interleave(32, 1).repeat_interleave(32, 2) * 10
    optimizers = {name: build_optimizer(m, cfg.train) for name, (m, cfg) in models.items()}

    def train_step(name):
        model = models[name][0].train()
        total = sum(model(images, targets).losses.values())
        optimizers[name].zero_grad(set_to_none=True)
        total.backward()
        optimizers[name].step()


    def infer(model):
        with torch.inference_mode():
            model.eval()(images)

    candidates = {}
    for name, (model, _) in models.items():
        candidates[f"{name}_infer"] = lambda model=model: infer(model)
        candidates[f"{name}_train"] = lambda name=name: train_step(name)
    median = interleaved_medians(candidates, rounds=4)
    ratios = {f"{name}_{mode}_over_softmax": median[f"{name}_{mode}"] / median[f"softmax_{mode}"]
              for name in ("ssa", "ssa_head", "ssa_paper") for mode in ("infer", "train")}
    benchmark.extra_info.update(**{f"{k}_s": v for k, v in median.items()}, **ratios)
    print("\n" + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in median.items())
          + "; " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    with torch.inference_mode():
        logits = models["ssa"][0].eval()(images).logits
    assert logits.shape == (1, 150, 128, 128) and torch.isfinite(logits).all()
    with torch.inference_mode():
        benchmark.pedantic(models["ssa"][0].eval(), args=(images,), rounds=2, iterations=1)
