#!/usr/bin/env bash
# The fuzz suite's long form: 1,000 hypothesis examples per test, over 10,000 Ingest and Query
# requests in all, against one real embedded `runstream server` (a few minutes). The tally of
# requests sent and answers received is printed at the end and written to $RUNSTREAM_FUZZ_REPORT
# (default $TMPDIR/runstream-fuzz-report.txt). A failing example is shrunk to a minimal one
# (RUNSTREAM_FUZZ_SHRINK=1; CI leaves it off). Extra arguments go to pytest, e.g. `-k ingest`.
set -euo pipefail
cd "$(dirname "$0")/../.."
export RUNSTREAM_FUZZ_EXAMPLES=${RUNSTREAM_FUZZ_EXAMPLES:-1000}
export RUNSTREAM_FUZZ_SHRINK=${RUNSTREAM_FUZZ_SHRINK:-1}
export RUNSTREAM_FUZZ_REPORT=${RUNSTREAM_FUZZ_REPORT:-${TMPDIR:-/tmp}/runstream-fuzz-report.txt}
exec "${PYTHON:-.venv/bin/python}" -m pytest tests/fuzz -q -p no:cacheprovider --timeout 3600 "$@"
