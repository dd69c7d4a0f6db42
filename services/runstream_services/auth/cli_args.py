"""`runstream keys create|rotate|revoke|ls`: the argparse side only (handlers in auth/commands.py,
imported when a command runs), so `runstream --help` stays fast on the bare SDK install."""

from __future__ import annotations

import argparse

HELP = """\
API keys live in the server's keys file (api_keys_file / RUNSTREAM_API_KEYS_FILE), stored as
salted scrypt hashes under a key id. A new key is printed once, on stdout; it cannot be shown again.
A running server picks up changes within a second or two: no restart.

roles: read   query runs and metrics, download artifacts
       write  + log runs, upload artifacts, register models, move unprotected aliases
       admin  + move or delete protected aliases (e.g. production)
project: one project name, or '*' for every project.

On Kubernetes the keys file is a Secret mounted into the servers: edit a local copy with
--keys-file and update the Secret from it (kubectl create secret generic ... --from-file=keys.json=...
--dry-run=client -o yaml | kubectl apply -f -); the servers see the change when the kubelet
refreshes the mount (about a minute).

examples:
  runstream keys create --project mnist --role write --name ci-trainer
  runstream keys create --project '*' --role admin --name alice
  runstream keys ls
  runstream keys rotate rsk_3f9a1c2b8d7e     new secret, same id, project and role
  runstream keys revoke rsk_3f9a1c2b8d7e
"""


def _file_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keys-file",
        help="the keys file to edit (default $RUNSTREAM_API_KEYS_FILE; created by the first `create`)",
    )


def add_commands(sub) -> None:
    keys = sub.add_parser(
        "keys",
        help="create, rotate, revoke and list API keys (edits the server's keys file)",
        description="Manage the API keys of a Runstream server.",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    p = ksub.add_parser("create", help="make a key for one project (or '*') and role; prints it once")
    _file_flag(p)
    p.add_argument("--project", required=True, help="project the key may reach, or '*' for all")
    p.add_argument("--role", required=True, choices=["read", "write", "admin"], help="what the key may do")
    p.add_argument("--name", default="", help="who or what holds the key (shown by `ls`)")
    p.add_argument("--json", action="store_true", help="print {key_id, key, project, role, name} as JSON")
    p.set_defaults(run="runstream_services.auth.commands:create")

    p = ksub.add_parser(
        "rotate",
        help="give KEY_ID a new secret (the old one stops working); a plaintext key is replaced by a "
        "hashed one with a new id",
    )
    _file_flag(p)
    p.add_argument("key_id", metavar="KEY_ID", help="id shown by `runstream keys ls`")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run="runstream_services.auth.commands:rotate")

    p = ksub.add_parser("revoke", help="delete KEY_ID from the keys file; it stops working at once")
    _file_flag(p)
    p.add_argument("key_id", metavar="KEY_ID", help="id shown by `runstream keys ls`")
    p.set_defaults(run="runstream_services.auth.commands:revoke")

    p = ksub.add_parser(
        "ls", help="list key ids with their project, role, name and creation time (never secrets)"
    )
    _file_flag(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run="runstream_services.auth.commands:ls")
