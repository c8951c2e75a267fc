"""Plugins: heads, necks, backbones and datasets registered by other packages, without a fork.

A plugin is a module that registers names when imported (``@register_classifier``,
``@register_neck``, ``@register_backbone``, ``DatasetCatalog.register``). Three ways in, as
MMSegmentation's ``custom_imports`` and pytest's plugins:

- entry points: ``[project.entry-points."segheads.plugins"] my_heads = "my_heads.heads"`` in the
  plugin's ``pyproject.toml``; every installed one is imported once per process on first use
  (``$SEGHEADS_DISABLE_PLUGIN_AUTOLOAD=1`` turns that off);
- a grid spec's ``imports: [my_heads.heads]``;
- ``--import my_heads.heads`` on any command.

A cell records the plugins that provide its classifier, neck, backbone or dataset (or the
importable module outside segheads that registered one itself, a script's own import) in
``RunConfig.plugins`` (module -> "<distribution> <version> <digest>", the digest the first 16
hex of the SHA-256 of the plugin's top-level package's ``.py`` files): they are its MLflow params
and part of its ``config_hash``, so an edited head is a new cell. Every process that trains a cell
(the driver, a Ray Tune trial, each Ray Train worker, on any node, one that joined later
included) imports them before the cell is built (``activate``) and refuses to train when its copy
differs from the one the cell was planned with. A plugin that fails to import, or registers a
name already taken, is an ``InputError`` (one line, exit 2) naming the module and the name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InputError, one_line
from harness.logs import logger

ENTRY_POINT_GROUP = "segheads.plugins"
AUTOLOAD_OFF = "SEGHEADS_DISABLE_PLUGIN_AUTOLOAD"
_OWN_PACKAGES = ("harness", "classifiers", "backbones")
# Top-level modules a registered name may come from that are never a cell's plugin: segheads',
# detectron2's, a script's ``__main__`` (not importable elsewhere), an object without a module.
_NEVER_PLUGINS = (*_OWN_PACKAGES, "detectron2", "__main__", "?")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class Plugin:
    """One imported plugin module: where it came from (``origin``), the installed distribution
    that holds it (``None`` for a module found on the path only), and the names it registered
    (``provides``: ``(kind, name)`` pairs)."""

    module: str
    origin: str
    distribution: str | None
    version: str | None
    digest: str
    provides: tuple[tuple[str, str], ...]

    @property
    def stamp(self) -> str:
        """What a cell records of it: ``"<distribution> <version> <digest>"`` (``"unpackaged <digest>"``)."""
        package = f"{self.distribution} {self.version}" if self.distribution else "unpackaged"
        return f"{package} {self.digest}"

    def describe(self) -> str:
        return f"plugin {self.module} ({self.stamp}; {self.origin})"


_LOADED: dict[str, Plugin] = {}
_PROVIDERS: dict[tuple[str, str], str] = {}  # (kind, name) -> the plugin module that registered it
_autoloaded = False


def load_plugins(modules: Iterable[str] = (), origin: str = "--import") -> list[Plugin]:
    """The installed entry points (once per process, unless ``$SEGHEADS_DISABLE_PLUGIN_AUTOLOAD``),
    then ``modules`` in order, each imported once; returns the plugins of ``modules``."""
    _autoload()
    return [_load(module, origin) for module in modules]


def _autoload() -> None:
    global _autoloaded
    if _autoloaded or os.environ.get(AUTOLOAD_OFF, "") not in ("", "0"):
        return
    _autoloaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        _load(entry.module, f"entry point {entry.name!r}")


def _load(module: str, origin: str) -> Plugin:
    if module in _LOADED:
        return _LOADED[module]
    if not isinstance(module, str) or not _MODULE.fullmatch(module):
        raise InputError(f"plugin {module!r} ({origin}): expected a module name such as my_package.heads")
    before = _registered()
    try:
        importlib.import_module(module)
    except Exception as exc:  # a plugin's own error, whatever it is, is one line naming the plugin
        raise InputError(f"plugin {module} ({origin}): {one_line(exc)}") from None
    provides = tuple(sorted(_registered() - before))
    distribution = _distribution(module)
    version = importlib.metadata.version(distribution) if distribution else None
    plugin = Plugin(module, origin, distribution, version, _digest(module), provides)
    _LOADED[module] = plugin
    for item in provides:
        _PROVIDERS[item] = module
    logger.debug("loaded %s: %s", plugin.describe(), ", ".join(f"{k} {n}" for k, n in provides) or "no new names")
    return plugin


def _registries() -> dict[str, object]:
    """kind -> its registry (``names()``/``list()``, ``module_of``); imported when first needed."""
    from backbones.build import BACKBONES
    from backbones.necks import NECKS
    from classifiers.registry import CLASSIFIERS
    from harness.data import DatasetCatalog

    return {"classifier": CLASSIFIERS, "neck": NECKS, "backbone": BACKBONES, "dataset": DatasetCatalog}


def _registered() -> set[tuple[str, str]]:
    return {(kind, name) for kind, registry in _registries().items()
            for name in (registry.list() if kind == "dataset" else registry.names())}


def _distribution(module: str) -> str | None:
    """The installed distribution whose files hold ``module``'s top-level package, if any."""
    owners = importlib.metadata.packages_distributions().get(module.partition(".")[0], [])
    return owners[0] if owners else None


def _digest(module: str) -> str:
    """The first 16 hex of the SHA-256 over the ``.py`` files of ``module``'s top-level package
    (paths and contents, in sorted order): any edit to the plugin's code changes it."""
    top = importlib.import_module(module.partition(".")[0])
    roots = [Path(p) for p in getattr(top, "__path__", [])]
    files = sorted(f for root in roots for f in root.rglob("*.py")) if roots else [Path(top.__file__)]
    digest = hashlib.sha256()
    for file in files:
        base = next((root for root in roots if file.is_relative_to(root)), file.parent)
        digest.update(str(file.relative_to(base)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def source(kind: str, name: str) -> str:
    """Where registered ``kind`` ``name`` comes from: ``segheads``, ``detectron2``, the plugin that
    registered it (``Plugin.describe``), or the module that registered it outside a plugin."""
    if (kind, name) in _PROVIDERS:
        return _LOADED[_PROVIDERS[(kind, name)]].describe()
    module = _registries()[kind].module_of(name)
    top = module.partition(".")[0]
    if top in _OWN_PACKAGES:
        return "segheads"
    return top if top == "detectron2" else f"module {module} (registered outside a plugin)"


def _provider(kind: str, name: str) -> str | None:
    """The module a cell must import to have ``kind`` ``name``: the plugin that registered it, or
    an importable module outside segheads and detectron2 that did (a script's own import, run
    through the Python API); ``None`` for segheads' own, timm's and ``__main__``'s."""
    if (kind, name) in _PROVIDERS:
        return _PROVIDERS[(kind, name)]
    registry = _registries()[kind]
    if name not in registry:
        return None
    module = registry.module_of(name)
    return None if module.partition(".")[0] in _NEVER_PLUGINS else module


def cell_components(cfg) -> list[tuple[str, str]]:
    """The registered ``(kind, name)`` pairs a cell is built from."""
    from harness.data import dataset_splits

    splits = dataset_splits(cfg.data.dataset)
    return [("classifier", cfg.model.classifier), ("neck", cfg.model.neck), ("backbone", cfg.model.backbone),
            *(("dataset", split) for split in splits.values())]


def with_plugins(cfg):
    """``cfg`` with ``plugins`` set to the plugins that provide its components (``_provider``), each
    stamped (``Plugin.stamp``): what its params record and its ``config_hash`` includes."""
    modules = dict.fromkeys(filter(None, (_provider(kind, name) for kind, name in cell_components(cfg))))
    return dataclasses.replace(cfg, plugins={module: _load(module, "the module that registered a part of the cell").stamp
                                             for module in modules})


def activate(cfg, strict: bool = True) -> None:
    """Import the plugins cell ``cfg`` was planned with, in this process, before it is built; a
    plugin whose copy here differs from the planned one is an ``InputError`` (``strict``: training)
    or a warning (reading a logged cell's weights)."""
    _autoload()
    for module, planned in cfg.plugins.items():
        here = _load(module, f"a plugin of the cell, on {socket.gethostname()}").stamp
        if here != planned:
            message = (f"plugin {module} on {socket.gethostname()} (pid {os.getpid()}) is {here}; the cell was "
                       f"planned with {planned}: install the same version on every node")
            if strict:
                raise InputError(message)
            logger.warning("%s", message)
