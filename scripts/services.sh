#!/usr/bin/env bash
# Installs, starts, checks and stops the real services Runstream's tests and local development use,
# all on loopback:
#   Kafka 4.x (KRaft, single node) from the official jars on Maven Central, run with Java 17;
#   MinIO server, built with `go install github.com/minio/minio@latest`;
#   ClickHouse through chDB (in-process; `install` only checks the Python package imports).
#
# usage: scripts/services.sh install|up|down|status|env
#   install  download/build what is missing into the cache (reused afterwards)
#   up       install, then start Kafka and MinIO and wait until each answers
#   down     stop what `up` started (by pid file), nothing else
#   status   show what runs
#   env      print the environment variables the tests read (RUNSTREAM_TEST_*)
#
# Cache: $RUNSTREAM_CACHE_DIR (default ~/.cache/runstream). State, data and logs:
# $RUNSTREAM_SERVICES_DIR (default .runstream/services in the repo, git-ignored).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${RUNSTREAM_CACHE_DIR:-$HOME/.cache/runstream}
state=${RUNSTREAM_SERVICES_DIR:-$root/.runstream/services}
py=${PYTHON:-python3}
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$root/scripts/kafka-pom.xml")
kafka_libs=$cache/kafka-$kafka_version/libs
minio_bin=$cache/bin/minio
kafka_port=${RUNSTREAM_KAFKA_PORT:-19092}
kafka_ctl_port=$((kafka_port + 1))
minio_port=${RUNSTREAM_MINIO_PORT:-19000}
minio_console_port=$((minio_port + 1))
# Loopback-only development credentials; not a secret.
minio_user=runstream-dev
minio_password=runstream-dev-password

log() { echo "[services] $*" >&2; }

install_kafka() {
  if [ -f "$kafka_libs/kafka_2.13-$kafka_version.jar" ]; then return; fi
  log "resolving Kafka $kafka_version jars from Maven Central (once)"
  mkdir -p "$kafka_libs.tmp"
  mvn -q -B -f "$root/scripts/kafka-pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$kafka_libs.tmp" -DincludeScope=runtime >&2
  # Kafka 4 brings slf4j 1.7 transitively; the 2.x api is the one its log4j2 binding needs.
  rm -f "$kafka_libs.tmp"/slf4j-api-1.*.jar
  mv "$kafka_libs.tmp" "$kafka_libs"
}

install_minio() {
  if [ -x "$minio_bin" ]; then return; fi
  log "building MinIO with go install (once; takes minutes on 2 cores)"
  mkdir -p "$cache/bin"
  GOBIN=$cache/bin GOFLAGS=-trimpath go install github.com/minio/minio@latest >&2
}

install_chdb() {
  "$py" -c "import chdb, clickhouse_connect" 2>/dev/null || {
    log "chDB is missing: pip install -e '.[embedded]'"; exit 1; }
}

wait_port() {  # name port seconds
  local i
  for ((i = 0; i < $3 * 5; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  log "$1 did not open port $2 within $3 s; see $state/$1.log"; tail -20 "$state/$1.log" >&2 || true
  return 1
}

running() { [ -f "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }

port_free() {  # name port: refuse to start when something else already listens there
  if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then
    log "port $2 for $1 is taken by another process; stop it or set RUNSTREAM_${1^^}_PORT"
    exit 1
  fi
}

start_kafka() {
  if running kafka; then return; fi
  port_free kafka "$kafka_port"
  port_free kafka "$kafka_ctl_port"
  local dir=$state/kafka
  mkdir -p "$dir"
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$kafka_ctl_port
listeners=PLAINTEXT://127.0.0.1:$kafka_port,CONTROLLER://127.0.0.1:$kafka_ctl_port
advertised.listeners=PLAINTEXT://127.0.0.1:$kafka_port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=4
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
PROPS
  local java_opts=(-Xms256m -Xmx768m -XX:+UseG1GC "-Dlog4j2.configurationFile=$root/scripts/kafka-log4j2.properties")
  if [ ! -f "$dir/data/meta.properties" ]; then
    java "${java_opts[@]}" -cp "$kafka_libs/*" kafka.tools.StorageTool format \
      -t "$(java -cp "$kafka_libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)" \
      -c "$dir/server.properties" >"$state/kafka.log" 2>&1
  fi
  nohup java "${java_opts[@]}" -cp "$kafka_libs/*" kafka.Kafka "$dir/server.properties" \
    >>"$state/kafka.log" 2>&1 &
  echo $! >"$state/kafka.pid"
}

start_minio() {
  if running minio; then return; fi
  port_free minio "$minio_port"
  mkdir -p "$state/minio-data"
  MINIO_ROOT_USER=$minio_user MINIO_ROOT_PASSWORD=$minio_password MINIO_BROWSER=off \
    nohup "$minio_bin" server "$state/minio-data" --address "127.0.0.1:$minio_port" \
    --console-address "127.0.0.1:$minio_console_port" >"$state/minio.log" 2>&1 &
  echo $! >"$state/minio.pid"
}

health() {
  wait_port kafka "$kafka_port" 90
  wait_port minio "$minio_port" 60
  local i
  for ((i = 0; i < 100; i++)); do
    if curl -sf "http://127.0.0.1:$minio_port/minio/health/ready" >/dev/null; then break; fi
    sleep 0.3
  done
  "$py" - <<PY
import asyncio, sys
from aiokafka.admin import AIOKafkaAdminClient
async def main():
    for _ in range(60):
        admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:$kafka_port")
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception as exc:  # the broker is still electing its controller
            last = exc
            await asyncio.sleep(1)
        finally:
            await admin.close()
    sys.exit(f"kafka is not answering: {last}")
asyncio.run(main())
PY
  "$py" -c "import clickhouse_connect; c = clickhouse_connect.get_client(dsn='chdb://'); assert c.query('SELECT 1').result_rows == [(1,)]"
  log "kafka 127.0.0.1:$kafka_port, minio 127.0.0.1:$minio_port, chdb: healthy"
}

stop() {
  local name=$1 pid
  if [ -f "$state/$name.pid" ]; then
    pid=$(cat "$state/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -9 "$pid" 2>/dev/null || true
      log "stopped $name ($pid)"
    fi
    rm -f "$state/$name.pid"
  fi
}

print_env() {
  echo "RUNSTREAM_TEST_KAFKA=127.0.0.1:$kafka_port"
  echo "RUNSTREAM_TEST_S3_ENDPOINT=127.0.0.1:$minio_port"
  echo "RUNSTREAM_TEST_S3_ACCESS_KEY=$minio_user"
  echo "RUNSTREAM_TEST_S3_SECRET_KEY=$minio_password"
}

mkdir -p "$state"
case "${1:-}" in
  install) install_chdb; install_kafka; install_minio ;;
  up) install_chdb; install_kafka; install_minio; start_kafka; start_minio; health ;;
  down) stop kafka; stop minio ;;
  status)
    for s in kafka minio; do
      if running $s; then echo "$s: running (pid $(cat "$state/$s.pid"))"; else echo "$s: stopped"; fi
    done ;;
  env) print_env ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac
