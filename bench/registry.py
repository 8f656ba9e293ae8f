"""One generic name -> object registry, with close-match errors for unknown names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from bench.errors import unknown

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered mapping of names to objects, filled by the `register` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                owner = getattr(self._items[name], "__module__", None)
                by = f" (by {owner})" if owner else ""
                raise ValueError(f"{self.kind} name '{name}' is already taken{by}; register it under another name")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise unknown(self.kind, name, self._items) from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
