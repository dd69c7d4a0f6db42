"""The model registry service: `service.py` (the gRPC servicer: access checks, request -> calls ->
protos), `sql.py` (all SQL text), `rules.py` (names, roles, artifact digests, alias state; pure)."""
