"""detectron2's ``DatasetCatalog`` / ``MetadataCatalog`` contract, implemented natively.

Semantics follow detectron2 (``detectron2/data/catalog.py``): a dataset is a
zero-argument function returning ``list[dict]`` registered once under a name;
metadata is an attribute bag per name whose attributes, once set, cannot be set
to a different value. When detectron2 is importable every registration is
mirrored into its catalogs, so datasets registered here work in detectron2 code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.errors import unknown_name_error

try:  # pragma: no cover - detectron2 is not installable from the registries here
    from detectron2.data import DatasetCatalog as _D2DatasetCatalog
    from detectron2.data import MetadataCatalog as _D2MetadataCatalog
except ImportError:
    _D2DatasetCatalog = _D2MetadataCatalog = None


class _DatasetCatalog:
    def __init__(self) -> None:
        self._loaders: dict[str, Callable[[], list[dict]]] = {}

    def register(self, name: str, func: Callable[[], list[dict]]) -> None:
        if not callable(func):
            raise TypeError(f"dataset {name!r}: expected a zero-argument function returning list[dict], got {func!r}")
        if name in self._loaders:
            raise ValueError(f"dataset {name!r} is already registered")
        self._loaders[name] = func
        if _D2DatasetCatalog is not None and name not in _D2DatasetCatalog:
            _D2DatasetCatalog.register(name, func)

    def get(self, name: str) -> list[dict]:
        if name not in self._loaders:
            raise unknown_name_error("dataset", name, list(self._loaders))
        return self._loaders[name]()

    def list(self) -> list[str]:
        return sorted(self._loaders)

    def remove(self, name: str) -> None:
        self._loaders.pop(name)

    def __contains__(self, name: str) -> bool:
        return name in self._loaders


class Metadata:
    """Attributes of one dataset; re-setting an attribute to a different value fails."""

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)

    def __setattr__(self, key: str, value: Any) -> None:
        if key == "name":
            raise AttributeError("a dataset's metadata name cannot change")
        if key in self.__dict__ and self.__dict__[key] != value:
            raise ValueError(
                f"metadata {key!r} of dataset {self.name!r} is already {self.__dict__[key]!r}; refusing to set {value!r}"
            )
        object.__setattr__(self, key, value)
        if _D2MetadataCatalog is not None:
            _D2MetadataCatalog.get(self.name).set(**{key: value})

    def __getattr__(self, key: str) -> Any:
        raise AttributeError(f"dataset {self.name!r} has no metadata {key!r}; set: {sorted(self.__dict__)}")

    def set(self, **kwargs: Any) -> Metadata:
        for key, value in kwargs.items():
            setattr(self, key, value)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _MetadataCatalog:
    def __init__(self) -> None:
        self._metadata: dict[str, Metadata] = {}

    def get(self, name: str) -> Metadata:
        """The metadata of ``name``, created empty on first access (as in detectron2)."""
        if name not in self._metadata:
            self._metadata[name] = Metadata(name)
        return self._metadata[name]

    def list(self) -> list[str]:
        return sorted(self._metadata)

    def remove(self, name: str) -> None:
        self._metadata.pop(name, None)


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()
