#!/usr/bin/env bash
# Installs the peer routers `infergate loadtest compare` can measure infergate against, into
# .tools/peers-venv (a Python venv of its own, so the peers' pins never touch .tools/venv):
#   sglang-router 0.3.2   SGLang's Rust router (cache_aware policy): python -m sglang_router.launch_router
# Idempotent. Not needed by the tests: compare skips a contender that is not installed, with a note.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.tools/peers-venv"
log() { printf '[install-peers] %s\n' "$*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
  log "python venv at $venv"
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import sglang_router' 2>/dev/null; then
  log "pip install sglang-router==0.3.2"
  "$venv/bin/pip" install -q --disable-pip-version-check sglang-router==0.3.2
fi
log "ready: $venv/bin/python -m sglang_router.launch_router"
