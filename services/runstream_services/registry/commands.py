"""`runstream models ls|show|alias` and `runstream artifact get`: the registry from a shell, through
the SDK's RegistryClient (the SDK alone is needed, no server packages). Output is plain text for
people, or JSON with --json; errors print the server's message and exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from runstream.errors import RunstreamError
from runstream.registry_client import RegistryClient, model_record, parse_model_ref, version_record


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ms else "-"


def _client(args: argparse.Namespace) -> RegistryClient:
    return RegistryClient(args.endpoint, args.api_key)


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def models_ls(args: argparse.Namespace) -> None:
    with _client(args) as client:
        models = client.models(args.project)
    if args.json:
        return _print_json(models)
    if not models:
        print(f"no registered models in project {args.project!r}")
        return
    for m in models:
        aliases = ", ".join(f"{a}->v{v}" for a, v in m["aliases"].items()) or "-"
        print(
            f"{m['name']}  latest v{m['latest_version']}  aliases: {aliases}  created {_when(m['created_ms'])}"
        )


def models_show(args: argparse.Namespace) -> None:
    name, version, alias = parse_model_ref(args.ref)
    with _client(args) as client:
        if version or alias:
            v = version_record(client.get_model_version(args.project, name, version, alias))
            return _print_json(v) if args.json else _print_version(v)
        model = model_record(client.get_model(args.project, name))
        versions = client.model_versions(args.project, name)
    if args.json:
        return _print_json({**model, "versions": versions})
    print(
        f"model {model['name']} (project {args.project}) created {_when(model['created_ms'])} by {model['creator']}"
    )
    if model["description"]:
        print(f"  {model['description']}")
    for k, val in model["tags"].items():
        print(f"  tag {k}={val}")
    print(f"  protected aliases: {', '.join(model['protected_aliases']) or '-'}")
    for v in versions:
        aliases = f"  [{', '.join(v['aliases'])}]" if v["aliases"] else ""
        print(
            f"  v{v['version']}  run {v['run_id']}  {v['artifact_name']}:{v['artifact_version']}  "
            f"sha256 {v['artifact_sha256'][:12]}  {_when(v['created_ms'])}{aliases}"
        )


def _print_version(v: dict) -> None:
    print(f"{v['model']}:{v['version']}  aliases: {', '.join(v['aliases']) or '-'}")
    print(f"  run          {v['run_id']}")
    print(f"  artifact     {v['artifact_name']}:{v['artifact_version']}  sha256 {v['artifact_sha256']}")
    for f in v["files"]:
        print(f"    {f['path']}  {f['size']:,} bytes  {f['sha256'][:12]}")
    print(f"  git commit   {v['git_commit'] or '-'}{' (dirty)' if v['git_dirty'] else ''}")
    for d in v["datasets"]:
        print(f"  dataset      {d['name']} {d['version']} {d['uri']}".rstrip())
    for key, m in v["metrics"].items():
        print(f"  metric       {key} last={m['last']:g} min={m['min']:g} max={m['max']:g} steps={m['count']}")
    print(f"  created      {_when(v['created_ms'])} by {v['creator']}")
    if v["description"]:
        print(f"  description  {v['description']}")
    for k, val in v["tags"].items():
        print(f"  tag          {k}={val}")


def models_alias(args: argparse.Namespace) -> None:
    with _client(args) as client:
        if args.delete:
            previous = client.delete_alias(args.project, args.model, args.alias, reason=args.reason or "")
            print(f"{args.model}@{args.alias} deleted (pointed at v{previous})")
            return
        if args.version is None:
            raise RunstreamError("give the version to point the alias at, or --delete")
        previous = client.set_alias(
            args.project, args.model, args.alias, args.version, reason=args.reason or ""
        )
    was = f"v{previous}" if previous else "new"
    print(f"{args.model}@{args.alias} -> v{args.version} (was {was})")


def models_lineage(args: argparse.Namespace) -> None:
    starts = [x for x in (args.ref, args.run_id, args.dataset) if x]
    if len(starts) != 1:
        raise RunstreamError("give one of REF (a model version), --run RUN_ID or --dataset NAME@VERSION")
    with _client(args) as client:
        graph = client.lineage(
            args.project, args.ref, run_id=args.run_id, dataset=args.dataset, direction=args.direction,
            max_depth=args.depth,
        )  # fmt: skip
    if args.json:
        return _print_json({"start": graph.start, "truncated": graph.truncated,
                            "nodes": [vars(n) for n in graph.nodes], "edges": [vars(e) for e in graph.edges]})  # fmt: skip
    labels = {n.id: f"{n.kind} {n.label}" + (" (missing)" if n.missing else "") for n in graph.nodes}
    print(f"lineage of {labels[graph.start]}: {len(graph.nodes)} nodes, {len(graph.edges)} edges")
    for e in sorted(graph.edges, key=lambda e: (graph.node(e.source).depth, e.source, e.target)):
        print(f"  {labels[e.source]}  --{e.relation}-->  {labels[e.target]}")
    if graph.truncated:
        print("  (truncated: raise --depth to see more)")


def artifact_get(args: argparse.Namespace) -> None:
    with _client(args) as client:
        paths = client.download_artifact(
            args.project, args.source, args.name, args.dest, progress=not args.no_progress
        )
    for p in paths:
        print(p)
    print(f"{len(paths)} file(s) downloaded to {args.dest}, sha256 checked", file=sys.stderr)


#: the handler each subcommand names in cli.py (by name, so building the parser imports nothing)
HANDLERS = {f.__name__: f for f in (models_ls, models_show, models_alias, models_lineage, artifact_get)}


def main(args: argparse.Namespace) -> int:
    try:
        HANDLERS[args.handler](args)
    except RunstreamError as exc:
        print(f"runstream {args.command}: {getattr(exc, 'details', None) or exc}", file=sys.stderr)
        return 2
    return 0
