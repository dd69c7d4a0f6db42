#!/usr/bin/env bash
# Installs helm once into the cache and checks the Runstream chart with it.
#
# usage: scripts/helm.sh install|path|lint|template [VALUES...]|check
#   install   build helm from the Go module proxy into $cache/bin (once; minutes on 2 cores)
#   path      print the helm binary in use (the cached one, or one already on PATH)
#   lint      `helm lint --strict` with each helm/runstream/ci/*-values.yaml
#   template  `helm template` with each ci values file (or the files given) to stdout
#   check     install, lint, then template every ci values file (output discarded) — what CI runs
#
# Cache: $RUNSTREAM_CACHE_DIR (default ~/.cache/runstream). Version: $RUNSTREAM_HELM_VERSION.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${RUNSTREAM_CACHE_DIR:-$HOME/.cache/runstream}
helm_version=${RUNSTREAM_HELM_VERSION:-v3.21.4}
# The Kubernetes version helm assumes without a cluster (`helm template`, lint's deprecation
# check). Helm's Makefile sets it from its k8s.io modules (v0.36 for v3.21); `go install` would
# leave the built-in default, 1.20, which fails charts that require a newer Kubernetes.
helm_k8s_minor=${RUNSTREAM_HELM_K8S_MINOR:-36}
helm_bin=$cache/bin/helm
chart=$root/helm/runstream

log() { echo "[helm] $*" >&2; }

cached_version_ok() {
  [ -x "$helm_bin" ] && [ "$("$helm_bin" version --template '{{.Version}}' 2>/dev/null)" = "$helm_version" ]
}

find_helm() {
  if [ -x "$helm_bin" ]; then echo "$helm_bin"; return; fi
  command -v helm 2>/dev/null || return 1
}

install_helm() {
  if cached_version_ok; then return; fi
  if ! command -v go >/dev/null 2>&1; then
    log "go is missing: install Go (https://go.dev/dl) or put helm on PATH"; exit 1
  fi
  log "building helm $helm_version with go install (once; takes minutes on 2 cores)"
  local started
  started=$(date +%s)
  mkdir -p "$cache/bin"
  # Build into a temporary GOBIN and move the result, so an interrupted build leaves nothing half-written.
  local tmp
  tmp=$(mktemp -d "$cache/bin/.helm-build.XXXXXX")
  local ldflags="-w -s -X helm.sh/helm/v3/internal/version.version=$helm_version"
  local pkg
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$helm_k8s_minor"
  done
  GOBIN=$tmp GOFLAGS=-trimpath CGO_ENABLED=0 go install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$helm_version" >&2
  mv -f "$tmp/helm" "$helm_bin"
  rmdir "$tmp"
  log "helm $helm_version built in $(( $(date +%s) - started )) s: $helm_bin"
}

# Helm writes caches/config under $HOME by default; keep them out of the user's config.
helm_env() {
  export HELM_CACHE_HOME=$cache/helm/cache HELM_CONFIG_HOME=$cache/helm/config HELM_DATA_HOME=$cache/helm/data
}

values_files() {
  if [ $# -gt 0 ]; then printf '%s\n' "$@"; else ls "$chart"/ci/*-values.yaml; fi
}

lint() {
  local helm f
  helm=$(find_helm) || { log "helm not found: run scripts/helm.sh install"; exit 1; }
  helm_env
  while read -r f; do
    log "lint --strict $(basename "$f")"
    "$helm" lint --strict "$chart" -f "$f" >&2
  done < <(values_files "$@")
}

template() {
  local helm f
  helm=$(find_helm) || { log "helm not found: run scripts/helm.sh install"; exit 1; }
  helm_env
  while read -r f; do
    log "template $(basename "$f")"
    "$helm" template runstream "$chart" --namespace runstream -f "$f"
  done < <(values_files "$@")
}

cmd=${1:-check}
shift || true
case "$cmd" in
  install) install_helm ;;
  path) find_helm ;;
  lint) lint "$@" ;;
  template) template "$@" ;;
  check) install_helm; lint "$@"; template "$@" >/dev/null; log "chart OK" ;;
  *) echo "usage: $0 install|path|lint|template [VALUES...]|check" >&2; exit 2 ;;
esac
