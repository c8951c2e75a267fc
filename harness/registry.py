"""A name -> object table shared by the backbone, neck and classifier registries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from harness.errors import unknown_name_error

T = TypeVar("T")


class Registry(Generic[T]):
    """Names map to objects registered once; ``check`` (optional) validates each object."""

    def __init__(self, kind: str, check: Callable[[str, T], None] | None = None) -> None:
        self.kind, self._check, self._items = kind, check, {}

    def register(self, name: str) -> Callable[[T], T]:
        def _register(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self.module_of(name)}; "
                                 "expected a new name")
            if self._check is not None:
                self._check(name, obj)
            self._items[name] = obj
            return obj

        return _register

    def get(self, name: str) -> T:
        """The object registered as ``name``; ``InputError`` listing the known names otherwise."""
        if name not in self._items:
            raise unknown_name_error(self.kind, name, list(self._items))
        return self._items[name]

    def module_of(self, name: str) -> str:
        """The module that defined what ``name`` is registered as (``classifiers.softmax``)."""
        return getattr(self.get(name), "__module__", None) or "?"

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
