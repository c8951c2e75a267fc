"""Peer tests: segheads beside the field's own code on the same weights and inputs
(``../shared/PEERS.md``). Those against MMSegmentation run whenever ``mmseg`` imports
(``.ci/run`` installs it from the package index) and are skipped, saying so, where it does not."""

from pathlib import Path

import pytest
from peers.mmseg_peer import import_mmseg


@pytest.fixture(scope="session")
def mmseg():
    """The ``mmseg`` package, its modules registered."""
    return import_mmseg()


@pytest.fixture(scope="session")
def mmseg_configs(mmseg) -> Path:
    """The configs MMSegmentation ships inside its package."""
    return Path(mmseg.__file__).parent / ".mim" / "configs"


@pytest.fixture(scope="session")
def mmseg_tools(mmseg) -> Path:
    """MMSegmentation's tools folder (model converters) inside its package."""
    return Path(mmseg.__file__).parent / ".mim" / "tools"
