#!/usr/bin/env bash
# The Runstream cluster image, built without a container engine or Docker Hub: a debootstrapped
# Debian bookworm root (Debian's python3 3.11), a venv at /opt/runstream with the pinned, hashed
# requirements of runstream[server,dashboard] (no chDB), user 10001, ENTRYPOINT ["runstream"],
# packed as an OCI image by umoci. helm/runstream/image/Dockerfile builds the same thing with Docker.
#
#   bash scripts/build_image.sh lock    # re-pin helm/runstream/image/requirements.txt (pip-compile)
#   bash scripts/build_image.sh build   # root; apt-get install debootstrap umoci skopeo
#   bash scripts/build_image.sh smoke   # root; runs the built image with chroot (no engine)
#
# Output under $RUNSTREAM_IMAGE_CACHE (default ~/.cache/runstream/image, never in git):
#   oci/                               OCI layout, tag runstream:<version>
#   runstream-<version>.oci.tar        that layout as one file (`podman load -i`, Docker >= 25 `docker load -i`)
# Push: skopeo copy oci:$CACHE/oci:<version> docker://registry.example.com/runstream:<version>
# Older Docker: skopeo copy oci:$CACHE/oci:<version> docker-archive:runstream.tar:runstream:<version>
#
# smoke unpacks the image (umoci unpack) and, in a private mount + pid namespace, chroots into it
# as the image's user with its env: its entrypoint + cmd (`runstream server --help`), `import chdb`
# must fail, `pip check`; then serves `runstream server --bus kafka --components ingest` against
# $RUNSTREAM_TEST_KAFKA (default: the Kafka of scripts/services.sh) until grpc.health.v1 answers
# SERVING (checked by the image's own python), and `runstream dashboard` until its health answers.
# With SMOKE_CLICKHOUSE_DSN=http://user:pass@host:8123 also a `--components writer,query` process on
# that ClickHouse server, and a run logged through ingest is read back from query.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${RUNSTREAM_IMAGE_CACHE:-$HOME/.cache/runstream/image}
LOCK=$ROOT/helm/runstream/image/requirements.txt
EXTRAS=(server dashboard)
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_PACKAGES=python3,python3-venv,ca-certificates,tzdata
PIP_TOOLS=pip-tools==7.7.0
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml" | head -1)
TAG=${RUNSTREAM_IMAGE_TAG:-$VERSION}
SOURCES=(pyproject.toml README.md client services dashboards)

log() { printf '[build_image] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (debootstrap, chroot, umoci's file owners)"; }
need() { command -v "$1" >/dev/null || die "$1 is missing: apt-get install -y debootstrap umoci skopeo"; }

copy_sources() {  # a clean copy of what the package is built from (no build/ or egg-info in the checkout)
  rm -rf "$1" && mkdir -p "$1"
  for name in "${SOURCES[@]}"; do cp -a "$ROOT/$name" "$1/"; done
  find "$1" -name __pycache__ -prune -exec rm -rf {} + -o -name '*.egg-info' -prune -exec rm -rf {} +
}

cmd_lock() {
  # Resolved with this machine's python3 (3.11, linux x86_64: the markers of Debian's python3 3.11).
  local venv=$CACHE/piptools-venv src=$CACHE/lock-src
  [ -x "$venv/bin/pip-compile" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q "$PIP_TOOLS"; }
  copy_sources "$src"
  (cd "$src" && env -u PIP_FIND_LINKS CUSTOM_COMPILE_COMMAND="bash scripts/build_image.sh lock" "$venv/bin/pip-compile" --quiet --generate-hashes --strip-extras \
     --allow-unsafe --no-emit-index-url --resolver backtracking \
     $(printf -- '--extra %s ' "${EXTRAS[@]}") \
     --output-file "$LOCK" pyproject.toml)
  log "pinned $(grep -c '^[a-z0-9]' "$LOCK") packages in ${LOCK#"$ROOT"/}"
}

base_tar() {  # the debootstrapped root, cached: rebuild with RUNSTREAM_IMAGE_REFRESH=1
  local tar=$CACHE/base-$SUITE.tar
  if [ -s "$tar" ] && [ -z "${RUNSTREAM_IMAGE_REFRESH:-}" ]; then echo "$tar"; return; fi
  local dir=$CACHE/base-rootfs
  rm -rf "$dir"
  log "debootstrap $SUITE ($BASE_PACKAGES) from $MIRROR"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$dir" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $CACHE/debootstrap.log"
  chroot "$dir" apt-get clean
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/* "$dir"/var/log/* "$dir"/dev/* "$dir"/tmp/* \
    "$dir"/usr/share/man "$dir"/usr/share/info "$dir"/usr/share/locale
  tar -C "$dir" --numeric-owner -cf "$tar.part" . && mv "$tar.part" "$tar"
  rm -rf "$dir"
  echo "$tar"
}

cmd_build() {
  need_root build; need debootstrap; need umoci; need skopeo
  [ -s "$LOCK" ] || die "no ${LOCK#"$ROOT"/}: run bash scripts/build_image.sh lock"
  mkdir -p "$CACHE"
  local started=$SECONDS tar wheels=$CACHE/wheels src=$CACHE/src bundle=$CACHE/bundle layout=$CACHE/oci
  tar=$(base_tar)
  log "base root: $tar ($((SECONDS - started)) s)"

  # Wheels are fetched here (PyPI) and installed offline in the root, each checked against the lock's hashes.
  log "downloading the pinned wheels"
  mkdir -p "$wheels"
  env -u PIP_FIND_LINKS python3 -m pip download -q --only-binary=:all: --no-deps --require-hashes \
    -r "$LOCK" -d "$wheels"
  copy_sources "$src"
  rm -f "$wheels"/runstream-*.whl
  env -u PIP_FIND_LINKS python3 -m pip wheel -q --no-deps -w "$wheels" "$src"

  rm -rf "$layout" "$bundle"
  umoci init --layout "$layout"
  umoci new --image "$layout:$TAG"
  umoci unpack --image "$layout:$TAG" "$bundle"
  local r=$bundle/rootfs
  tar -C "$r" --numeric-owner -xf "$tar"
  mkdir -p "$r/tmp/wheels" && cp "$wheels"/*.whl "$r/tmp/wheels/" && cp "$LOCK" "$r/tmp/requirements.txt"
  log "installing into /opt/runstream"
  unshare --mount --fork env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 chroot "$r" /bin/sh -eu -c '
    python3 -m venv /opt/runstream
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
    /opt/runstream/bin/pip install -q --no-index --find-links /tmp/wheels --require-hashes --no-deps \
      -r /tmp/requirements.txt
    /opt/runstream/bin/pip install -q --no-index --no-deps /tmp/wheels/runstream-*.whl
    /opt/runstream/bin/pip check
    groupadd --gid 10001 runstream
    useradd --no-create-home --uid 10001 --gid 10001 --home-dir /tmp --shell /usr/sbin/nologin runstream
  '
  rm -rf "$r"/tmp/* "$r"/root/.cache
  chmod 1777 "$r/tmp"

  # the commit the sources came from, "-dirty" when they differ from it (the build copies the work tree)
  local revision
  revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
  [ -z "$(git -C "$ROOT" status --porcelain -- "${SOURCES[@]}" 2>/dev/null)" ] || revision=$revision-dirty
  local labels=(--config.label "org.opencontainers.image.title=runstream"
    --config.label "org.opencontainers.image.version=$VERSION"
    --config.label "org.opencontainers.image.revision=$revision"
    --config.label "org.opencontainers.image.base.name=debian:$(cat "$r/etc/debian_version") (debootstrap --variant=minbase $SUITE)")
  umoci repack --image "$layout:$TAG" "$bundle"
  umoci config --image "$layout:$TAG" --author "scripts/build_image.sh" \
    --config.entrypoint runstream --config.cmd server --config.cmd --help \
    --config.user 10001:10001 --config.workingdir /tmp \
    --config.env PATH=/opt/runstream/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env PYTHONUNBUFFERED=1 --config.env PYTHONDONTWRITEBYTECODE=1 --config.env HOME=/tmp \
    --config.exposedports 7777/tcp --config.exposedports 7778/tcp --config.exposedports 8501/tcp \
    "${labels[@]}"
  umoci gc --layout "$layout"
  rm -rf "$bundle"

  rm -f "$CACHE"/runstream-*.tar
  tar -C "$layout" -cf "$CACHE/runstream-$TAG.oci.tar" .
  log "built runstream:$TAG in $((SECONDS - started)) s: $layout and $CACHE/runstream-$TAG.oci.tar" \
    "($(du -sh "$CACHE/runstream-$TAG.oci.tar" | cut -f1), gzip layers)"
}

smoke_check_py() {  # run by the image's python; every check retries for up to 90 s
  cat <<'EOF'
"""grpc HOST:PORT [SERVICE...]: grpc.health.v1 for "" and each service | http URL: its body |
roundtrip INGEST QUERY: the SDK logs a run through ingest, the query service returns its points."""
import sys, time, urllib.request

kind, target, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
STEPS = 20
SERVING = b"\x08\x01"


def grpc_check():
    import grpc
    with grpc.insecure_channel(target) as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
        answers = {name: check((b"\x0a" + bytes([len(name)]) + name.encode()) if name else b"", timeout=3)
                   for name in ["", *rest]}
    return ", ".join(f"{name or '(server)'} {'SERVING' if a == SERVING else 'NOT_SERVING'}" for name, a in answers.items())


def http_check():
    return urllib.request.urlopen(target, timeout=3).read().decode()


def roundtrip():
    import runstream
    from runstream.errors import ServerError
    run = runstream.init(project="smoke", endpoint=target, spool_dir="/tmp/smoke/spool",
                         system_metrics_interval_s=0, capture_packages=False)
    for step in range(STEPS):
        run.log({"loss": 1.0 / (step + 1)}, step=step)
    assert run.finish(timeout_s=60), "the run was not acked"
    with runstream.Api(rest[0]) as api:
        while True:
            try:
                count = api.run("smoke", run.id)["metrics"].get("loss", {}).get("count")
                if count == STEPS:
                    return f"{STEPS} points logged through ingest, stored by the writer, read back from query"
            except ServerError as exc:
                if exc.code != "NOT_FOUND":
                    raise
            time.sleep(0.5)


deadline = time.monotonic() + 90
while True:
    try:
        answer = {"grpc": grpc_check, "http": http_check, "roundtrip": roundtrip}[kind]()
        if kind != "grpc" or "NOT_SERVING" not in answer or time.monotonic() > deadline:
            break
    except Exception as exc:
        if time.monotonic() > deadline:
            sys.exit(f"{kind} {target}: no answer: {exc}")
    time.sleep(0.5)
print(f"{kind} {target}: {answer}")
sys.exit(0 if {"grpc": "NOT_SERVING" not in answer, "http": answer == "ok", "roundtrip": True}[kind] else 1)
EOF
}

cmd_smoke() {
  need_root smoke; need umoci
  local layout=$CACHE/oci bundle=$CACHE/smoke
  [ -f "$layout/index.json" ] || die "no image in $layout: run bash scripts/build_image.sh build"
  local kafka=${RUNSTREAM_TEST_KAFKA:-}
  [ -n "$kafka" ] || kafka=$(bash "$ROOT/scripts/services.sh" env 2>/dev/null | sed -n 's/^RUNSTREAM_TEST_KAFKA=//p')
  [ -n "$kafka" ] || die "no Kafka for the serve check: set RUNSTREAM_TEST_KAFKA=host:port (or bash scripts/services.sh up)"
  local started=$SECONDS port=${SMOKE_PORT:-17777} qport=${SMOKE_QUERY_PORT:-17787} dport=${SMOKE_DASHBOARD_PORT:-18501}
  local prefix=${SMOKE_TOPIC_PREFIX:-smoke$(date +%s)} dsn=${SMOKE_CLICKHOUSE_DSN:-}
  # SMOKE_KEEP=1 keeps the unpacked bundle and reuses it the next time (while debugging the check)
  if [ -z "${SMOKE_KEEP:-}" ] || [ ! -f "$bundle/config.json" ]; then
    rm -rf "$bundle"
    umoci unpack --image "$layout:$TAG" "$bundle" >/dev/null
  fi
  local r=$bundle/rootfs
  log "unpacked $TAG in $((SECONDS - started)) s: rootfs $(du -sh "$r" | cut -f1)"
  # What a runtime would run: the image config's user, env and entrypoint + cmd (umoci wrote them
  # into the bundle's config.json), here with chroot instead of a container engine.
  local user env args
  user=$(python3 -c 'import json,sys; u=json.load(open(sys.argv[1]))["process"]["user"]; print("%d:%d" % (u["uid"], u["gid"]))' "$bundle/config.json")
  env=$(python3 -c 'import json,sys,shlex; print(shlex.join(json.load(open(sys.argv[1]))["process"]["env"]))' "$bundle/config.json")
  args=$(python3 -c 'import json,sys,shlex; print(shlex.join(json.load(open(sys.argv[1]))["process"]["args"]))' "$bundle/config.json")
  echo "== image config: user $user, args $args"
  smoke_check_py >"$bundle/smoke_check.py"
  touch "$r/etc/hosts"
  # A private mount + pid namespace, set up as the chart runs the pod: the root read-only, a
  # writable emptyDir-like tmpfs on /tmp (HOME), /proc, /dev and /etc/hosts as a runtime gives
  # them; all gone when it exits (and every process in it with it).
  local rc=0
  unshare --mount --pid --fork --mount-proc="$r/proc" /bin/sh -eu -c '
    r=$1; user=$2; env=$3; args=$4; port=$5; qport=$6; dport=$7; kafka=$8; prefix=$9; dsn=${10}
    mount --rbind "$r" "$r" && mount -o remount,bind,ro "$r"
    mount -t tmpfs -o mode=1777,size=1g tmpfs "$r/tmp"
    mount --rbind /dev "$r/dev"
    mount --bind /etc/hosts "$r/etc/hosts"
    mkdir "$r/tmp/smoke" && chown "$user" "$r/tmp/smoke" && cp "$r/../smoke_check.py" "$r/tmp/"
    run() { eval "chroot --userspec=$user \"\$r\" /usr/bin/env -i $env \"\$@\""; }
    run_exec() { eval "exec chroot --userspec=$user \"\$r\" /usr/bin/env -i $env \"\$@\""; }
    # the smoke Kafka is a single development broker: allow topics under the replication factor
    cluster="RUNSTREAM_KAFKA_TOPIC_PREFIX=$prefix RUNSTREAM_KAFKA_GROUP_ID=$prefix-writers"
    cluster="$cluster RUNSTREAM_KAFKA_ALLOW_UNDER_REPLICATED=1 RUNSTREAM_CLICKHOUSE_DATABASE=$prefix"
    echo "== $args"; eval "run $args" | head -3
    echo "== uid: $(run python -c "import os; print(os.getuid())")"
    echo "== import chdb: $(run python -c "import chdb" 2>&1 | tail -1)"
    echo "== pip check: $(run pip check)"
    echo "== read-only root: $(run sh -c "touch /opt/runstream/x 2>&1 || true")"
    rc=0; pids=""
    if [ -n "$dsn" ]; then
      echo "== serve: runstream server --bus kafka --components writer,query --clickhouse-dsn <server>"
      (run_exec env $cluster runstream server --bus kafka --kafka-bootstrap "$kafka" --components writer,query \
        --clickhouse-dsn "$dsn" --host 127.0.0.1 --port "$qport" --metrics-port 0 --data-dir /tmp/smoke/writer \
        >"$r/tmp/smoke/writer.log" 2>&1) &
      writer=$!; pids="writer"
      run python /tmp/smoke_check.py grpc "127.0.0.1:$qport" runstream.v1.QueryService || rc=1
    fi
    echo "== serve: runstream server --bus kafka --components ingest ($kafka)"
    (run_exec env $cluster runstream server --bus kafka --kafka-bootstrap "$kafka" --components ingest \
      --host 127.0.0.1 --port "$port" --metrics-port 0 --data-dir /tmp/smoke/ingest \
      >"$r/tmp/smoke/ingest.log" 2>&1) &
    ingest=$!; pids="ingest $pids"
    run python /tmp/smoke_check.py grpc "127.0.0.1:$port" runstream.v1.IngestService || rc=1
    if [ -n "$dsn" ]; then
      run python /tmp/smoke_check.py roundtrip "127.0.0.1:$port" "127.0.0.1:$qport" || rc=1
    fi
    echo "== dashboard: runstream dashboard --endpoint 127.0.0.1:$qport --port $dport"
    (run_exec runstream dashboard --endpoint "127.0.0.1:$qport" --port "$dport" >"$r/tmp/smoke/dashboard.log" 2>&1) &
    dashboard=$!; pids="dashboard $pids"
    run python /tmp/smoke_check.py http "http://127.0.0.1:$dport/_stcore/health" || rc=1
    for name in $pids; do
      eval "pid=\$$name"; kill -TERM "$pid" 2>/dev/null || true; stopped=0; wait "$pid" || stopped=$?
      echo "== $name stopped on SIGTERM: exit $stopped"
      [ "$stopped" = 0 ] || rc=1
    done
    [ "$rc" = 0 ] || { for name in $pids; do echo "$name log:"; tail -20 "$r/tmp/smoke/$name.log"; done; exit 1; }
  ' smoke "$r" "$user" "$env" "$args" "$port" "$qport" "$dport" "$kafka" "$prefix" "$dsn" || rc=$?
  [ -n "${SMOKE_KEEP:-}" ] || rm -rf "$bundle"
  [ "$rc" = 0 ] || die "smoke failed ($rc)"
  log "smoke passed in $((SECONDS - started)) s"
}

case "${1:-}" in
  lock) cmd_lock ;;
  build) cmd_build ;;
  smoke) cmd_smoke ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
