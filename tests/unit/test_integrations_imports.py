"""runstream.integrations: `import runstream` (and the integrations package) loads no framework;
an integration whose framework does not import says which extra installs it (frameworks blocked
in a child interpreter by a sys.meta_path finder: a stand-in for an install without them); and
the pure value conversions the integrations share."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from runstream.integrations._common import numeric, plain, with_tag

FRAMEWORKS = ["sklearn", "xgboost", "lightgbm", "optuna", "keras", "jax", "scipy"]


def _child(code: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_runstream_and_the_integrations_package_loads_no_framework():
    out = _child(f"""
        import json, sys
        import runstream, runstream.integrations
        print(json.dumps(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)))
    """)  # fmt: skip
    assert out == []


def test_a_missing_framework_names_the_extra_that_installs_it():
    out = _child(f"""
        import importlib, json, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {FRAMEWORKS!r}:
                    raise ImportError(f"{{name}} is blocked for this test")
                return None

        sys.meta_path.insert(0, Block())
        errors = {{}}
        for name in ("sklearn", "xgboost", "lightgbm", "optuna", "keras"):
            try:
                importlib.import_module(f"runstream.integrations.{{name}}")
            except ImportError as exc:
                errors[name] = str(exc)
        print(json.dumps(errors))
    """)  # fmt: skip
    assert sorted(out) == ["keras", "lightgbm", "optuna", "sklearn", "xgboost"]
    for name, message in out.items():
        assert f'pip install "runstream[{name}]"' in message and "blocked for this test" in message
    assert "KERAS_BACKEND" in out["keras"] and "xgboost-cpu" in out["xgboost"]


def test_plain_values_for_config_and_numeric_values_for_metrics():
    class Estimator:
        def __repr__(self):
            return "Estimator(depth=3)"

    assert plain(np.float32(0.5)) == 0.5 and type(plain(np.int64(3))) is int and plain(np.bool_(True)) is True
    assert plain(np.array(2.5)) == 2.5 and plain(None) is None and plain("x") == "x"
    assert plain([1, np.float64(2.0), Estimator()]) == [1, 2.0, "Estimator(depth=3)"]
    assert (
        plain({"a": Estimator()}) == {"a": "Estimator(depth=3)"}
        and plain(Estimator()) == "Estimator(depth=3)"
    )
    assert plain(np.zeros(3)).startswith("array(")  # an array is not a config value: its repr
    assert numeric({"loss": np.float32(0.25), "name": "x", "flag": True, "n": 3}) == {"loss": 0.25, "n": 3.0}
    assert with_tag(None, "best") == {"best": ""} and with_tag(["a"], "s", "v") == {"a": "", "s": "v"}
    assert with_tag({"k": 1}, "best") == {"k": "1", "best": ""}


def test_xgboost_config_text_becomes_numbers():
    pytest.importorskip("xgboost")
    from runstream.integrations.xgboost import _number

    assert _number("0.300000012") == 0.3 and _number("3") == 3 and _number("-1") == -1
    assert _number("1e-05") == 1e-05 and _number("reg:squarederror") == "reg:squarederror"
    assert _number("[1.5091028E0]") == "[1.5091028E0]" and _number("18446744073709551615") == 2**64 - 1
