"""`run.config` and `run.summary`: dicts whose changes are sent to the server as RunUpdates.
Keys and values are checked on the caller's thread (values.value_map); the owning Run decides
whether this rank sends them (only the rank that owns the config does, see Run._send_update)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from runstream.v1 import types_pb2

from .values import value_map

SendUpdate = Callable[..., None]  # Run._send_update(config=... | summary=...)


class RunDict(MutableMapping):
    """A dict with attribute access; `scope` ("config" or "summary") names the RunUpdate field."""

    def __init__(self, send_update: SendUpdate, scope: str, initial: Mapping | None = None):
        self._send_update = send_update
        self._scope = scope
        self._data: dict[str, Any] = dict(initial or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __delitem__(self, key: str) -> None:
        del self._data[key]  # local only: the server keeps what it was sent

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(f"{self._scope} has no key {key!r}") from None

    def __repr__(self) -> str:
        return f"{self._scope}({self._data!r})"

    def update(self, other: Mapping | None = None, **kwargs: Any) -> None:  # type: ignore[override]
        changes = {**(dict(other) if other else {}), **kwargs}
        if not changes:
            return
        values: dict[str, types_pb2.Value] = value_map(changes)  # checks keys on the caller's thread
        self._send_update(**{self._scope: values})  # may refuse (too large): then nothing changes
        self._data.update(changes)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._data)
