"""Child interpreters without chDB, as in the lean `runstream[server]` install (the cluster image):
`env()` puts a sitecustomize on PYTHONPATH that refuses `import chdb` (ModuleNotFoundError, as when
it is not installed) and appends every refused name to a file, so a test can assert that a code
path never even asked for chDB, not only that it survived without it.

Blocking in a child is the cheap stand-in for a fresh virtualenv without chDB (a 555 MB install
the test would otherwise have to leave out); the import system sees the same error either way."""

from __future__ import annotations

import os
from pathlib import Path

SITECUSTOMIZE = '''
import os
import sys


class _NoChdb:
    """Refuses chDB as if it were not installed; records each attempt in $NO_CHDB_LOG."""

    def find_spec(self, name, path=None, target=None):
        if name == "chdb" or name.startswith("chdb."):
            with open(os.environ["NO_CHDB_LOG"], "a") as log:
                log.write(name + "\\n")
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: lean server install)", name=name)
        return None


sys.meta_path.insert(0, _NoChdb())
with open(os.environ["NO_CHDB_LOG"] + ".loaded", "a") as _loaded:
    _loaded.write(" ".join(sys.orig_argv).replace("\\n", " ") + "\\n")
'''


class NoChdb:
    """One blocker folder and its log of refused imports, under `folder`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.log = self.folder / "refused.txt"
        self.log.write_text("")
        self.loaded_log = Path(f"{self.log}.loaded")
        self.loaded_log.write_text("")

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default os.environ) with the blocker first on PYTHONPATH."""
        base = dict(os.environ if base is None else base)
        path = [str(self.folder), *filter(None, [base.get("PYTHONPATH")])]
        return {**base, "PYTHONPATH": os.pathsep.join(path), "NO_CHDB_LOG": str(self.log)}

    def refused(self) -> list[str]:
        """The chDB module names a child asked for (and was refused), in order."""
        return self.log.read_text().split()

    def loaded(self) -> list[str]:
        """The command lines of the child interpreters that ran with the blocker."""
        return self.loaded_log.read_text().splitlines()
