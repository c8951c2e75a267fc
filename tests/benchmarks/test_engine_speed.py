"""The engine's cost, run on demand: ``python -m pytest tests/benchmarks -k engine -s``.

- a training step of the engine (``Trainer.run_step`` with its hooks, reporting through Ray
  Train every ``log_period``) inside a real Ray Train worker against a plain loop (forward,
  backward, step, the loss read with ``float()``) in that same worker process, interleaved
  in both orders (``timing.interleaved_medians``); goal <= 1.05x;
- the plain loop in that worker against the same loop in this process (what being a Ray
  Train worker costs by itself: threads, memory);
- a cell's start-up: ``launch`` of a 1-iteration cell (controller, worker actors, process
  group, model build, final checkpoint) against ``train_cell`` of it in this process.
Numbers are printed (the worker's through a file); nothing is asserted about time.
"""

import functools
import json
import sys
import time

import ray
import ray.train
import timing
import torch
from ray.train.torch import TorchTrainer

from harness.config import RunConfig, apply_overrides
from harness.data import AugmentConfig, DatasetCatalog, SemSegMapper, build_train_loader
from harness.engine import LocalContext, MetricsHook, Trainer, seed_everything, train_cell
from harness.engine.launch import RayTrainContext, init_ray, launch
from harness.modeling import build_segmentor
from harness.solver import build_optimizer

for _module in (sys.modules[__name__], timing):  # Ray workers run this file's functions
    ray.cloudpickle.register_pickle_by_value(_module)
_CELL = ["model.backbone=resnet10t", "model.embed_dim=128", "data.image_size=48", "data.batch_size=8",
         "data.num_workers=0", "measure.enabled=false", "train.threads=2", "train.log_period=20"]
_CPU = torch.device("cpu")
_STEPS, _ROUNDS = 20, 4


def _step_timings(cfg, context) -> dict[str, float]:
    """Median seconds per step of the plain loop and of the engine, in this process."""
    torch.set_num_threads(cfg.train.threads)
    seed_everything(0)
    records = DatasetCatalog.get("digits_sem_seg_train")[:256]
    batches = build_train_loader(records, SemSegMapper(11, 255, AugmentConfig(crop_size=(48, 48))), 8, 0, seed=0)
    plain_model, engine_model = build_segmentor(cfg, 11, 255).train(), build_segmentor(cfg, 11, 255)
    optimizer = build_optimizer(plain_model, cfg.train)
    trainer = Trainer(engine_model, batches, cfg.train, _CPU)
    trainer.register_hooks([MetricsHook(context, cfg.train.log_period)])
    engine_model.train()
    fixed = [next(batches) for _ in range(4)]
    trainer.batches = iter(fixed * (_STEPS * 2 * (_ROUNDS + 1)))

    def plain():
        for i in range(_STEPS):
            batch = fixed[i % 4]
            losses = plain_model(batch["image"], batch["sem_seg"]).losses
            total = sum(losses.values())
            [float(v.detach()) for v in losses.values()]  # the old loop's per-term read
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()

    def engine():
        for _ in range(_STEPS):
            trainer.run_step()
            trainer.iteration += 1
            for hook in trainer._hooks:
                hook.after_step()

    # Whichever runs second in a round is ~10 % slower here (caches): both orders, averaged.
    first = timing.interleaved_medians({"plain": plain, "engine": engine}, rounds=_ROUNDS)
    second = timing.interleaved_medians({"engine": engine, "plain": plain}, rounds=_ROUNDS)
    return {name: (first[name] + second[name]) / 2 / _STEPS for name in first}


def _in_worker(cfg, out, _config):
    out.write_text(json.dumps({f"worker_{k}": v for k, v in _step_timings(cfg, RayTrainContext()).items()}))


def test_engine_cost(tmp_path):
    cfg = apply_overrides(RunConfig(), _CELL + ["train.iters=100000"])
    started = init_ray(None)
    try:
        out = tmp_path / "worker.json"
        trainer = TorchTrainer(functools.partial(_in_worker, cfg, out), train_loop_config={},
                               scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 2}),
                               run_config=ray.train.RunConfig(name="engine-speed", storage_path=str(tmp_path)))
        trainer.fit()
        worker = json.loads(out.read_text())
        here = _step_timings(cfg, LocalContext(_CPU))
        short = apply_overrides(RunConfig(), _CELL + ["train.iters=1"])
        began = time.perf_counter()
        launch(train_cell, short, 1, tmp_path / "storage", cpus=2)
        launched = time.perf_counter() - began
        began = time.perf_counter()
        train_cell(short, LocalContext(_CPU))
        direct = time.perf_counter() - began
    finally:
        if started:
            ray.shutdown()
    print(f"\nstep (batch 8, 48 px, resnet10t + mlp + softmax, 2 threads): plain loop in the worker "
          f"{worker['worker_plain'] * 1e3:.1f} ms, engine in the worker {worker['worker_engine'] * 1e3:.1f} ms "
          f"({worker['worker_engine'] / worker['worker_plain']:.3f}x); plain loop in this process "
          f"{here['plain'] * 1e3:.1f} ms (worker / here {worker['worker_plain'] / here['plain']:.3f}x), engine here "
          f"{here['engine'] * 1e3:.1f} ms ({here['engine'] / here['plain']:.3f}x)")
    print(f"cell of 1 iteration: Ray Train launch {launched:.1f} s, in this process {direct:.1f} s, "
          f"start-up {launched - direct:.1f} s")
    assert worker["worker_plain"] > 0 and launched > 0
