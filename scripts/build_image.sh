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
# as uid 10001: `runstream server --help`, `import chdb` must fail, `pip check`, then a short
# `runstream server --bus kafka --components ingest` against $RUNSTREAM_TEST_KAFKA (default: the
# Kafka of scripts/services.sh) and a grpc.health.v1 check made with the image's own python.
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

  local labels=(--config.label "org.opencontainers.image.title=runstream"
    --config.label "org.opencontainers.image.version=$VERSION"
    --config.label "org.opencontainers.image.revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
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

health_check_py() {  # run by the image's python: grpc HOST:PORT (grpc.health.v1 "" + Ingest Health) | http URL
  cat <<'EOF'
import sys, time, urllib.request
kind, target = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + 90


def grpc_check():
    import grpc
    from runstream.v1 import ingest_pb2, ingest_pb2_grpc
    with grpc.insecure_channel(target) as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
        status = check(b"", timeout=3)
        ingest = ingest_pb2_grpc.IngestServiceStub(ch).Health(ingest_pb2.HealthRequest(), timeout=3)
    return ("SERVING" if status == b"\x08\x01" else f"NOT_SERVING {status!r}") + f", IngestService.Health {ingest.status}"


def http_check():
    return urllib.request.urlopen(target, timeout=3).read().decode()


while True:
    try:
        answer = grpc_check() if kind == "grpc" else http_check()
        break
    except Exception as exc:
        if time.monotonic() > deadline:
            sys.exit(f"no health answer from {target}: {exc}")
        time.sleep(0.5)
print(f"health {target}: {answer}")
sys.exit(0 if answer.startswith(("SERVING", "ok")) else 1)
EOF
}

cmd_smoke() {
  need_root smoke; need umoci
  local layout=$CACHE/oci bundle=$CACHE/smoke
  [ -f "$layout/index.json" ] || die "no image in $layout: run bash scripts/build_image.sh build"
  local kafka=${RUNSTREAM_TEST_KAFKA:-}
  [ -n "$kafka" ] || kafka=$(bash "$ROOT/scripts/services.sh" env 2>/dev/null | sed -n 's/^RUNSTREAM_TEST_KAFKA=//p')
  [ -n "$kafka" ] || die "no Kafka for the serve check: set RUNSTREAM_TEST_KAFKA=host:port (or bash scripts/services.sh up)"
  local started=$SECONDS port=${SMOKE_PORT:-17777} dport=${SMOKE_DASHBOARD_PORT:-18501} prefix=${SMOKE_TOPIC_PREFIX:-smoke$(date +%s)}
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
  mkdir -p "$r/tmp/smoke" && chown "$user" "$r/tmp/smoke"
  health_check_py >"$r/tmp/health_check.py"
  # A private mount + pid namespace: /proc, /dev, /etc/hosts as a runtime would give them; all
  # gone when it exits (and every process in it with it).
  local rc=0
  unshare --mount --pid --fork --mount-proc="$r/proc" /bin/sh -eu -c '
    r=$1; user=$2; env=$3; args=$4; port=$5; dport=$6; kafka=$7; prefix=$8
    mount --rbind /dev "$r/dev"
    touch "$r/etc/hosts" && mount --bind /etc/hosts "$r/etc/hosts"
    run() { eval "chroot --userspec=$user \"\$r\" /usr/bin/env -i $env \"\$@\""; }
    run_exec() { eval "exec chroot --userspec=$user \"\$r\" /usr/bin/env -i $env \"\$@\""; }
    echo "== $args"; eval "run $args" | head -3
    echo "== uid: $(run python -c "import os; print(os.getuid())")"
    echo "== import chdb: $(run python -c "import chdb" 2>&1 | tail -1)"
    echo "== pip check: $(run pip check)"
    echo "== serve: runstream server --bus kafka --components ingest ($kafka)"
    # (the smoke Kafka is a single development broker: allow topics under the replication factor)
    (run_exec env RUNSTREAM_KAFKA_TOPIC_PREFIX="$prefix" RUNSTREAM_KAFKA_ALLOW_UNDER_REPLICATED=1 runstream server --bus kafka --kafka-bootstrap "$kafka" \
      --components ingest --host 127.0.0.1 --port "$port" --metrics-port 0 --data-dir /tmp/smoke \
      >"$r/tmp/smoke/server.log" 2>&1) &
    server=$!
    rc=0; run python /tmp/health_check.py grpc "127.0.0.1:$port" || rc=$?
    echo "== dashboard: runstream dashboard --endpoint 127.0.0.1:$port --port $dport"
    (run_exec runstream dashboard --endpoint "127.0.0.1:$port" --port "$dport" >"$r/tmp/smoke/dashboard.log" 2>&1) &
    dashboard=$!
    run python /tmp/health_check.py http "http://127.0.0.1:$dport/_stcore/health" || rc=$?
    for name in dashboard server; do
      eval "pid=\$$name"; kill -TERM "$pid" 2>/dev/null || true; stopped=0; wait "$pid" || stopped=$?
      echo "== $name stopped on SIGTERM: exit $stopped"
      [ "$stopped" = 0 ] || rc=1
    done
    [ "$rc" = 0 ] || { for f in server dashboard; do echo "$f log:"; tail -20 "$r/tmp/smoke/$f.log"; done; exit 1; }
  ' smoke "$r" "$user" "$env" "$args" "$port" "$dport" "$kafka" "$prefix" || rc=$?
  [ -n "${SMOKE_KEEP:-}" ] || rm -rf "$bundle"
  [ "$rc" = 0 ] || die "smoke failed ($rc)"
  log "smoke passed in $((SECONDS - started)) s"
}

case "${1:-}" in
  lock) cmd_lock ;;
  build) cmd_build ;;
  smoke) cmd_smoke ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
