"""Files written whole: ``staged_file`` (a temporary beside the target, renamed onto it once
written, so a file that exists is complete)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def staged_file(path: str | Path, mode: str = "wb"):
    """An open temporary file beside ``path`` (``mode`` "wb" or "w") that becomes ``path`` when the
    block ends without an error; removed otherwise. The folder must exist."""
    path = Path(path)
    with tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=f".{path.name}.", suffix=".part",
                                     delete=False) as part:
        try:
            yield part
        except BaseException:
            part.close()
            os.unlink(part.name)
            raise
    os.replace(part.name, path)
