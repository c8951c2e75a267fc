"""Where a tracking store's experiments keep their artifacts (``harness.tracking.ensure_experiment``)."""

from pathlib import Path
from urllib.parse import urlparse

from mlflow.tracking import MlflowClient

from harness.tracking import artifact_location, ensure_experiment


def test_new_experiments_keep_artifacts_beside_the_sqlite_file_and_old_ones_stay_where_they_were(tmp_path,
                                                                                              monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(uri)
    old = client.create_experiment("old", artifact_location=(tmp_path / "old-artifacts").as_uri())
    assert ensure_experiment(client, "old", uri) == old
    assert client.get_experiment(old).artifact_location == (tmp_path / "old-artifacts").as_uri()  # untouched

    new = ensure_experiment(client, "quickstart", uri)
    assert client.get_experiment(new).artifact_location == (store / "mlartifacts" / "quickstart").as_uri()
    assert ensure_experiment(client, "quickstart", uri) == new
    run = client.create_run(new).info.run_id
    client.log_text(run, "hello", "note.txt")
    assert (store / "mlartifacts" / "quickstart" / run / "artifacts" / "note.txt").read_text() == "hello"
    assert list(elsewhere.iterdir()) == []

    odd = Path(urlparse(artifact_location(uri, "my grid/v2")).path)
    assert odd.parent == store / "mlartifacts" and odd.name.startswith("my_grid_v2-") and len(odd.name) == 19
    assert artifact_location(uri, "my grid/v2") != artifact_location(uri, "my_grid_v2")
    assert artifact_location("http://127.0.0.1:5000", "quickstart") is None  # a server keeps its own
