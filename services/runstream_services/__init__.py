"""Runstream's server side: ingest, bus, writers, storage, query, auth and the CLI."""

__version__ = "0.1.0"
