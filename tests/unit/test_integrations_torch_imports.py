"""runstream.integrations.lightning and .transformers where their frameworks do not import (the
dev venv has no torch; a sys.meta_path finder blocks them in a child interpreter all the same,
a stand-in for an install without them): the error names the extra that installs them, and
`import runstream.integrations` loads neither. Their behaviour is tested against the real
frameworks in tests/integration/test_integrations_{lightning,transformers}.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

BLOCKED = ["torch", "lightning", "transformers"]


def test_missing_torch_frameworks_name_their_extras():
    code = f"""
        import importlib, json, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED!r}:
                    raise ImportError(f"{{name}} is blocked for this test")
                return None

        sys.meta_path.insert(0, Block())
        import runstream.integrations
        errors = {{}}
        for name in ("lightning", "transformers"):
            try:
                importlib.import_module(f"runstream.integrations.{{name}}")
            except ImportError as exc:
                errors[name] = str(exc)
        print(json.dumps(errors))
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(errors) == ["lightning", "transformers"]
    for name, message in errors.items():
        assert f'pip install "runstream[{name}]"' in message and "blocked for this test" in message
