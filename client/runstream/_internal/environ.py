"""os.environ for the SDK's many lookups at init, without os.environ's per-lookup cost.

Each `os.environ.get` encodes the name and decodes the value in Python (~0.8 us); an init asks
for ~60 variables (every setting's RUNSTREAM_<NAME>, the launchers' rank and world size), ~50 us
of a ~480 us init in a loop of short runs. On POSIX os.environ keeps its variables in a dict of
bytes (`_data`, updated in place by every os.environ write, so it is never stale); a lookup here
is one encode in C and one dict probe. Elsewhere, or if that store ever changes shape, it is
os.environ itself.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping

_ENCODING = sys.getfilesystemencoding()


class _Environ(Mapping[str, str]):
    def get(self, key: str, default=None):
        data = getattr(os.environ, "_data", None)
        if os.name != "posix" or type(data) is not dict:
            return os.environ.get(key, default)
        raw = data.get(key.encode(_ENCODING, "surrogateescape"))
        return default if raw is None else raw.decode(_ENCODING, "surrogateescape")

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(os.environ)

    def __len__(self) -> int:
        return len(os.environ)


ENVIRON: Mapping[str, str] = _Environ()
