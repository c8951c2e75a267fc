"""Load: one grid of 200 cheap cells on the real Ray cluster with a real MLflow SQLite store;
every cell ends FINISHED exactly once in MLflow and in results.jsonl, and a re-run adds nothing."""

from gridtools import assert_finished_once, write_spec

from harness.grid import expand, load_grid, run_grid

_CHEAP = {"model": {"embed_dim": 16}, "data": {"num_workers": 0, "image_size": 32, "batch_size": 2, "eval_batch_size": 32},
          "train": {"iters": 2, "log_period": 1}, "measure": {"image_size": 32, "iters": 1, "warmup": 0}}


def test_two_hundred_cells_each_finished_exactly_once(ray_cluster, tmp_path):
    uri, results = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "results.jsonl"
    spec = load_grid(write_spec(tmp_path, "load", classifiers=["softmax", "query", "protoseg", "ssa"],
                                seeds=list(range(50)), **_CHEAP))
    cells = expand(spec)
    assert len(cells) == 200
    outcome = run_grid(spec, uri, results_path=results)
    assert outcome.ran == 200 and [r.status for r in outcome.results] == ["FINISHED"] * 200
    assert_finished_once(uri, "load", cells, results)
    assert len(results.read_text().splitlines()) == 400  # each cell trained, then measured
    assert all(r.measurement is not None for r in outcome.results)
    again = run_grid(spec, uri, results_path=results)
    assert again.ran == 0 and len(results.read_text().splitlines()) == 400
    assert_finished_once(uri, "load", cells, results)
