"""Editable runs, alerts and saved views as `runstream server` runs them (issue 16, items 3-5):
the RunEditService, AlertService and SavedViewService beside the query service, and the alert
evaluator beside the store writer (it reads the blocks the writer stores; alerts/evaluator.py)."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from runstream_services.config import ServerSettings
from runstream_services.storage.clickhouse import ClientPool

log = logging.getLogger("runstream.server")


class WorkflowServices:
    def __init__(
        self, settings: ServerSettings, auth: Any, store_writer: Any = None, before_read: Any = None
    ):
        self.settings = settings
        self.before_read = before_read  # ClientPool's (server.py _read_barrier)
        self.auth = auth
        self.store_writer = store_writer
        self.evaluator: Any = None
        self._pool: ClientPool | None = None

    def _readers(self) -> ClientPool:
        if self._pool is None:
            self._pool = ClientPool(
                self.settings.resolved_clickhouse_dsn, size=2, before_read=self.before_read
            )
        return self._pool

    def start(self) -> None:
        """Starts the alert evaluator where this process stores blocks (it runs the writer)."""
        if self.store_writer is None:
            return
        from runstream_services.alerts.evaluator import AlertEvaluator
        from runstream_services.alerts.store import AlertStore

        self.evaluator = AlertEvaluator(
            AlertStore(self._readers(), self.settings.clickhouse_database), self.settings
        )
        self.store_writer.subscribe(self.evaluator.on_stored)
        self.evaluator.start()

    def add_to_server(self, server: grpc.aio.Server, served: list[str]) -> None:
        from runstream.v1 import alerts_pb2_grpc, run_edits_pb2_grpc
        from runstream_services.alerts.service import AlertServicer
        from runstream_services.alerts.store import AlertStore
        from runstream_services.run_edits.service import RunEditServicer

        s = self.settings
        edits = RunEditServicer(self._readers(), s.clickhouse_database, self.auth, writer=self.store_writer)
        run_edits_pb2_grpc.add_RunEditServiceServicer_to_server(edits, server)
        store = AlertStore(self._readers(), s.clickhouse_database)
        alerts = AlertServicer(store, self.auth, self.evaluator, allowed_hosts=s.alert_webhook_hosts)
        alerts_pb2_grpc.add_AlertServiceServicer_to_server(alerts, server)
        served += ["runstream.v1.RunEditService", "runstream.v1.AlertService"]
        self._add_saved_views(server, served)

    def _add_saved_views(self, server: grpc.aio.Server, served: list[str]) -> None:
        from runstream.v1 import saved_views_pb2_grpc
        from runstream_services.saved_views.service import SavedViewServicer
        from runstream_services.saved_views.store import SavedViewStore

        store = SavedViewStore(self._readers(), self.settings.clickhouse_database)
        saved_views_pb2_grpc.add_SavedViewServiceServicer_to_server(
            SavedViewServicer(store, self.auth), server
        )
        served.append("runstream.v1.SavedViewService")

    def close(self) -> None:
        if self.evaluator is not None:
            self.evaluator.close()
