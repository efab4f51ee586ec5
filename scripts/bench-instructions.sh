#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind: the gateway (and a
# baseline build, if given) against the hyper floor (`bare_proxy`), in front of the echo upstream,
# on the 1 KiB chat POST of scripts/bench-proxy.sh.
#
# Why: on a shared 2-vCPU VM the wall-clock CPU per request of scripts/bench-proxy.sh moves by
# 10-30% between rounds (steal, frequency, the neighbours); an instruction count does not, so a cut
# of 1% in the gateway's own work shows in one run. It counts user space only: the kernel's share
# (about 40% of the proxy's CPU, the same for every proxy here) and the cost of cache misses are not
# in it, so a change is judged here first and confirmed by scripts/bench-proxy.sh.
#
# Method per target: start it under callgrind, warm it up (wrk, 2 s), zero the counters, run
# `wrk -t1 -c8 -d${SECONDS_MEASURED}s`, dump the counters; instructions / requests completed. Each
# target's top functions by own instructions per request follow (TOP of them).
#
#   scripts/bench-instructions.sh                               # builds, then measures
#   NO_BUILD=1 BASELINE_BIN=/tmp/infergate-old scripts/bench-instructions.sh
#   TOP=40 SECONDS_MEASURED=8 scripts/bench-instructions.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_MEASURED=${SECONDS_MEASURED:-6}
TOP=${TOP:-15}
BASELINE_BIN=${BASELINE_BIN:-}
log() { printf '[bench-instructions] %s\n' "$*" >&2; }

for tool in valgrind callgrind_control wrk python3; do
  command -v "$tool" >/dev/null || { log "$tool is missing (valgrind: apt-get install valgrind; wrk: scripts/install-tools.sh)"; exit 1; }
done
if [ -z "${NO_BUILD:-}" ]; then
  log "building (release)"
  (cd "$root" && cargo build --release -q --bin infergate && cargo build --release -q -p infergate-gateway --example echo_upstream --example bare_proxy)
fi
INFERGATE_BIN=${INFERGATE_BIN:-$root/target/release/infergate}
ex="$root/target/release/examples"

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# shellcheck source=scripts/bench-post.sh
. "$root/scripts/bench-post.sh"
write_post_lua "$tmp/post.lua"

up_port=$(free_port)
"$ex/echo_upstream" "127.0.0.1:$up_port" >"$tmp/up.out" 2>&1 &
pids+=($!)

# measure NAME PORT CMD...: CMD listens on 127.0.0.1:PORT; prints "NAME REQUESTS INSTR/REQ", then
# the top functions.
measure() {
  local name=$1 port=$2; shift 2
  valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$tmp/cg.$name" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  local vg=$!
  pids+=("$vg")
  local url="http://127.0.0.1:$port/v1/chat/completions"
  for _ in $(seq 1 200); do
    curl -s -o /dev/null -X POST -d "$post_body" "$url" && break
    sleep 0.1
  done
  wrk -t1 -c8 -d2s -s "$tmp/post.lua" "$url" >/dev/null
  callgrind_control -z "$vg" >/dev/null 2>&1
  wrk -t1 -c8 -d"${SECONDS_MEASURED}s" -s "$tmp/post.lua" "$url" >"$tmp/$name.wrk"
  callgrind_control -d "$vg" >/dev/null 2>&1
  sleep 1
  kill "$vg" 2>/dev/null || true
  wait "$vg" 2>/dev/null || true
  if grep -q "Non-2xx" "$tmp/$name.wrk"; then
    log "$name answered non-2xx: $(grep Non-2xx "$tmp/$name.wrk")"; exit 1
  fi
  local requests
  requests=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$tmp/$name.wrk")
  python3 "$root/scripts/callgrind_self.py" "$tmp/cg.$name.1" "$requests" "$TOP" "$name"
}

# gateway NAME BIN: measures the gateway build BIN in front of the echo upstream.
gateway() {
  local port
  port=$(free_port)
  measure "$1" "$port" "$2" gateway --model m --endpoints "http://127.0.0.1:$up_port" \
    --flavor vllm --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$(free_port)"
}

results=()
results+=("$(gateway infergate "$INFERGATE_BIN")")
[ -z "$BASELINE_BIN" ] || results+=("$(gateway baseline "$BASELINE_BIN")")
port=$(free_port)
results+=("$(measure hyper "$port" "$ex/bare_proxy" "127.0.0.1:$up_port" "127.0.0.1:$port" 2)")

printf '%s\n\n' "${results[@]}" | python3 -c '
import sys
rows = {}
for block in sys.stdin.read().split("\n\n"):
    lines = block.strip().splitlines()
    if lines:
        name, requests, per = lines[0].split()
        rows[name] = int(per)
        print(f"{name}: {requests} requests; own instructions per request, top functions")
        print("\n".join(lines[1:]) + "\n")
floor = rows["hyper"]
base = rows.get("baseline")
print("target      instructions/request  vs hyper floor" + ("  vs baseline" if base else ""))
for name, per in rows.items():
    line = f"{name:10s}  {per:20d}  {per / floor:14.3f}"
    if base:
        line += f"  {per / base:11.3f}"
    print(line)
'
