"""Runstream's tests. Where things live:

- tests/unit/         needs nothing beyond the installed packages (chDB runs in-process); never a
                      real service, never a `runstream server` child process.
- tests/integration/  the real services (Kafka, MinIO) and real `runstream server` processes; their
                      fixtures live in tests/integration/conftest.py, so unit tests cannot ask for them.
- tests/e2e/          the dashboard in headless Chromium.

Helpers shared by the test folders (one copy each; import them, do not copy them):

- tests/server_process.py   one `runstream server` child process (+ free_port, its /metrics)
- tests/deployments.py      the processes of one deployment per bus mode ("embedded", "kafka")
- tests/real_services.py    the endpoints of the real Kafka/MinIO, started only when a test asks
- tests/ingest_client.py    a raw gRPC IngestService client: request builders, streams, acks
- tests/chdb_inspect.py     what a stopped server stored in its chDB folder
- tests/sdk_options.py      SDK settings that make the SDK's timers quick in tests
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository root."""
