"""``segheads ui``: MLflow's web UI on a tracking store, stopped as a whole."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

from harness.logs import logger
from harness.tracking.client import resolve_tracking_uri


def serve_ui(tracking_uri: str | None, host: str, port: int) -> int:
    """Run ``mlflow ui`` on the store until it exits, Ctrl-C or SIGTERM; its exit status (0 when stopped).

    The server runs in its own process group, stopped as a whole: ``mlflow ui`` runs the web server
    as its own child."""
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", resolve_tracking_uri(tracking_uri),
               "--host", host, "--port", str(port)]
    logger.info(f"MLflow UI on http://{host}:{port} (Ctrl-C stops it)")
    server = subprocess.Popen(command, start_new_session=True)

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `kill PID` stops the server too, as Ctrl-C does
    try:
        return server.wait()
    except KeyboardInterrupt:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # whatever of the group outlived its leader
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        return 0
