"""detectron2's ``DatasetCatalog`` / ``MetadataCatalog`` contract, with or without detectron2.

Semantics follow detectron2 (``detectron2/data/catalog.py``): a dataset is a
zero-argument function returning ``list[dict]`` registered once under a name;
metadata is an attribute bag per name whose attributes, once set, cannot be set
to a different value.

When detectron2 is importable, these catalogs are views of detectron2's own: one
registry, whichever side registers. A dataset registered in detectron2's catalogs (its
built-in ADE20K and Cityscapes splits, or a user's) is usable here by name, and one
registered here works in detectron2 code. Importing detectron2 first or last makes no
difference: this module imports it. Without detectron2 the catalogs are segheads' own.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from harness.errors import unknown_name_error

try:  # detectron2 is not on the package index: installed from its repository, when it is
    with warnings.catch_warnings():  # its modules' own deprecations are not segheads users' concern
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.script")
        from detectron2.data import DatasetCatalog as _D2DatasetCatalog
        from detectron2.data import MetadataCatalog as _D2MetadataCatalog
except ImportError:
    _D2DatasetCatalog = _D2MetadataCatalog = None

DETECTRON2 = _D2DatasetCatalog is not None  # whether the catalogs below are detectron2's


class _DatasetCatalog:
    def __init__(self) -> None:
        # name -> loader: detectron2's catalog (a dict of exactly that) when it is importable
        self._loaders: dict[str, Callable[[], list[dict]]] = _D2DatasetCatalog if DETECTRON2 else {}

    def register(self, name: str, func: Callable[[], list[dict]]) -> None:
        if not callable(func):
            raise TypeError(f"dataset {name!r}: expected a zero-argument function returning list[dict], got {func!r}")
        if name in self._loaders:
            raise ValueError(f"dataset {name!r} is already registered")
        self._loaders[name] = func

    def get(self, name: str) -> list[dict]:
        if name not in self._loaders:
            raise unknown_name_error("dataset", name, list(self._loaders))
        return self._loaders[name]()

    def list(self) -> list[str]:
        return sorted(self._loaders)

    def module_of(self, name: str) -> str:
        """The module that defined dataset ``name``'s loader (``harness.data.builtin``)."""
        if name not in self._loaders:
            raise unknown_name_error("dataset", name, list(self._loaders))
        return getattr(self._loaders[name], "__module__", None) or "?"

    def remove(self, name: str) -> None:
        self._loaders.pop(name)

    def __contains__(self, name: str) -> bool:
        return name in self._loaders


class Metadata:
    """Attributes of one dataset; re-setting an attribute to a different value fails. With
    detectron2, the attributes are those of detectron2's ``Metadata`` of the same name."""

    def __init__(self, name: str, values: dict[str, Any] | None = None) -> None:
        object.__setattr__(self, "_values", values if values is not None else {"name": name})
        object.__setattr__(self, "name", name)

    def __setattr__(self, key: str, value: Any) -> None:
        if key == "name":
            raise AttributeError("a dataset's metadata name cannot change")
        values = self._values
        if key in values and values[key] != value:
            raise ValueError(
                f"metadata {key!r} of dataset {self.name!r} is already {values[key]!r}; refusing to set {value!r}"
            )
        values[key] = value

    def __getattr__(self, key: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if key in values:
            return values[key]
        raise AttributeError(f"dataset {values['name']!r} has no metadata {key!r}; set: {sorted(values)}")

    def set(self, **kwargs: Any) -> Metadata:
        for key, value in kwargs.items():
            setattr(self, key, value)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)


class _MetadataCatalog:
    def __init__(self) -> None:
        self._metadata: dict[str, Metadata] = {}

    def get(self, name: str) -> Metadata:
        """The metadata of ``name``, created empty on first access (as in detectron2)."""
        if DETECTRON2:  # a view of detectron2's own, whatever detectron2 code did to it since
            return Metadata(name, vars(_D2MetadataCatalog.get(name)))
        if name not in self._metadata:
            self._metadata[name] = Metadata(name)
        return self._metadata[name]

    def list(self) -> list[str]:
        return sorted(_D2MetadataCatalog.list()) if DETECTRON2 else sorted(self._metadata)

    def remove(self, name: str) -> None:
        (_D2MetadataCatalog if DETECTRON2 else self._metadata).pop(name, None)


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()
