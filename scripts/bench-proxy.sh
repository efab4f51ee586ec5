#!/usr/bin/env bash
# Proxy overhead of infergate, measured against a trivial upstream (gateway/examples/echo_upstream.rs
# answering a 1 KiB JSON), side by side with going direct and with nginx (Debian's; proxy_pass to an
# upstream block with keepalive, round robin). Everything binds 127.0.0.1. A measurement, not a test:
# run it by hand (it takes about a minute), and copy the table into docs/BENCHMARKS.md.
#
#   scripts/bench-proxy.sh            # wrk at 2 threads / 64 connections, 5 s per phase
#   DURATION=10 CONNS=128 STREAMS=1000 scripts/bench-proxy.sh
#   NO_BUILD=1 scripts/bench-proxy.sh   # use the release binaries already in target/
#   WORKERS=1 scripts/bench-proxy.sh    # the gateway's --workers (default: one per core)
#   BASELINE_BIN=/tmp/infergate-old scripts/bench-proxy.sh  # also measure another build ("baseline")
#
# The last line, `summary: ...`, carries every figure as key=value for scripts that take medians.
#
# Needs wrk and nginx (scripts/install-tools.sh installs both).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-5}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
STREAMS=${STREAMS:-1000}
CHUNKS=${CHUNKS:-20}
INTERVAL_MS=${INTERVAL_MS:-50}
WORKERS=${WORKERS:-0}
BASELINE_BIN=${BASELINE_BIN:-}
log() { printf '[bench-proxy] %s\n' "$*" >&2; }

nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
command -v wrk >/dev/null || { log "wrk is missing: run scripts/install-tools.sh"; exit 1; }
[ -x "$nginx_bin" ] || { log "nginx is missing: run scripts/install-tools.sh"; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

if [ -z "${NO_BUILD:-}" ]; then
  log "building (release)"
  (cd "$root" && cargo build --release -q --bin infergate && cargo build --release -q -p infergate-gateway --example echo_upstream --example bench_client)
fi
bin="$root/target/release"
ex="$root/target/release/examples"

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # Servers started inside $(start ...) run in a subshell: their pids are in this file.
  [ -f "$tmp/pids" ] && while read -r p; do kill "$p" 2>/dev/null || true; done <"$tmp/pids"
  [ -f "$tmp/nginx.pid" ] && kill "$(cat "$tmp/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# Starts a server in the background and prints the address of the listening line with role $1.
start() {
  local role=$1 out=$2; shift 2
  "$@" >"$out" 2>"$out.err" &
  echo $! >>"$tmp/pids"
  for _ in $(seq 1 200); do
    addr=$(sed -n "s|^infergate $role listening on http://||p" "$out" | head -1)
    [ -n "$addr" ] && { echo "$addr"; return; }
    sleep 0.05
  done
  log "$role did not start: $(cat "$out.err")"; exit 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

up=$(start sim "$tmp/up.out" "$ex/echo_upstream" 127.0.0.1:0)
gw=$(start gateway "$tmp/gw.out" "$bin/infergate" gateway --model m --endpoints "http://$up" \
  --flavor vllm --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --workers "$WORKERS")
gateways=(infergate)
if [ -n "$BASELINE_BIN" ]; then
  base=$(start gateway "$tmp/base.out" "$BASELINE_BIN" gateway --model m --endpoints "http://$up" \
    --flavor vllm --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0)
  gateways+=(baseline)
fi
ngx_port=$(free_port)
mkdir -p "$tmp/nginx"
cat >"$tmp/nginx.conf" <<NGINX
worker_processes auto;
pid $tmp/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $tmp/nginx/body;
  proxy_temp_path $tmp/nginx/proxy;
  fastcgi_temp_path $tmp/nginx/fastcgi;
  uwsgi_temp_path $tmp/nginx/uwsgi;
  scgi_temp_path $tmp/nginx/scgi;
  upstream model { server $up; keepalive 256; }
  server {
    listen 127.0.0.1:$ngx_port;
    location / {
      proxy_pass http://model;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
"$nginx_bin" -c "$tmp/nginx.conf" -p "$tmp/nginx" -g 'daemon off;' 2>"$tmp/nginx.err" &
pids+=($!)
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/"$ngx_port") 2>/dev/null && break
  sleep 0.05
done
ngx="127.0.0.1:$ngx_port"

body=$(python3 -c 'h="{\"model\":\"m\",\"max_tokens\":16,\"messages\":[{\"role\":\"user\",\"content\":\""; t="\"}]}"; print(h+"y"*(1024-len(h)-len(t))+t)')
cat >"$tmp/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$body'
LUA

# wrk phase -> "rps p50 p99" (latencies in microseconds).
run_wrk() {
  local url=$1
  wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$tmp/post.lua" "$url/v1/chat/completions" >"$tmp/wrk.out"
  awk '
    function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1000000; return v }
    /Requests\/sec/ { rps=$2 }
    /^ +50%/ { p50=us($2) }
    /^ +99%/ { p99=us($2) }
    /Non-2xx/ { bad=$NF }
    END { printf "%.0f %.0f %.0f %s\n", rps, p50, p99, (bad==""?0:bad) }' "$tmp/wrk.out"
}

declare -A RPS P50 P99 BAD
for target in direct "${gateways[@]}" nginx; do
  case $target in direct) a=$up ;; infergate) a=$gw ;; baseline) a=$base ;; nginx) a=$ngx ;; esac
  log "wrk $target: ${THREADS} threads, ${CONNS} connections, ${DURATION}s"
  wrk -t1 -c4 -d1s -s "$tmp/post.lua" "http://$a/v1/chat/completions" >/dev/null  # warm-up
  read -r r p50 p99 bad < <(run_wrk "http://$a")
  RPS[$target]=$r; P50[$target]=$p50; P99[$target]=$p99; BAD[$target]=$bad
done

half=$(( ${RPS[infergate]} / 2 ))
declare -A RP50 RP99 RACH
for target in direct "${gateways[@]}" nginx; do
  case $target in direct) a=$up ;; infergate) a=$gw ;; baseline) a=$base ;; nginx) a=$ngx ;; esac
  log "open loop $target at $half req/s for ${DURATION}s"
  line=$("$ex/bench_client" rate "http://$a/v1/chat/completions" "$half" "$DURATION")
  RP50[$target]=$(sed -n 's/.*p50_us=\([0-9]*\).*/\1/p' <<<"$line")
  RP99[$target]=$(sed -n 's/.*p99_us=\([0-9]*\).*/\1/p' <<<"$line")
  RACH[$target]=$(sed -n 's/.*achieved=\([0-9]*\).*/\1/p' <<<"$line")
done

declare -A SP50 SP99 SDONE
for target in direct "${gateways[@]}"; do
  case $target in direct) a=$up ;; infergate) a=$gw ;; baseline) a=$base ;; esac
  log "$STREAMS concurrent SSE streams via $target ($CHUNKS chunks, ${INTERVAL_MS} ms apart)"
  line=$("$ex/bench_client" sse "http://$a/v1/chat/completions" "$STREAMS" "$CHUNKS" "$INTERVAL_MS")
  SP50[$target]=$(sed -n 's/.*p50_us=\([0-9]*\).*/\1/p' <<<"$line")
  SP99[$target]=$(sed -n 's/.*p99_us=\([0-9]*\).*/\1/p' <<<"$line")
  SDONE[$target]=$(sed -n 's/.*complete=\([0-9]*\).*/\1/p' <<<"$line")
done

echo
echo "machine: $(nproc) cores, $(uname -sr); $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "Closed loop (wrk -t$THREADS -c$CONNS -d${DURATION}s, 1 KiB JSON POST -> 1 KiB JSON):"
printf '| %-9s | %9s | %8s | %8s | %7s |\n' target "req/s" "p50 us" "p99 us" non-2xx
printf '|%s|%s|%s|%s|%s|\n' ----------- ----------- ---------- ---------- ---------
for t in direct "${gateways[@]}" nginx; do
  printf '| %-9s | %9s | %8s | %8s | %7s |\n' "$t" "${RPS[$t]}" "${P50[$t]}" "${P99[$t]}" "${BAD[$t]}"
done
echo
echo "Open loop at half of infergate's peak ($half req/s, ${DURATION}s, latency from the scheduled start):"
printf '| %-9s | %9s | %8s | %8s | %14s |\n' target "achieved" "p50 us" "p99 us" "p99 added us"
printf '|%s|%s|%s|%s|%s|\n' ----------- ----------- ---------- ---------- ----------------
for t in direct "${gateways[@]}" nginx; do
  printf '| %-9s | %9s | %8s | %8s | %14s |\n' "$t" "${RACH[$t]}" "${RP50[$t]}" "${RP99[$t]}" "$(( ${RP99[$t]} - ${RP99[direct]} ))"
done
echo
echo "$STREAMS concurrent SSE streams, $CHUNKS chunks ${INTERVAL_MS} ms apart (chunk delivery delay, send -> receive):"
printf '| %-9s | %9s | %8s | %8s | %14s |\n' target complete "p50 us" "p99 us" "p99 added us"
printf '|%s|%s|%s|%s|%s|\n' ----------- ----------- ---------- ---------- ----------------
for t in direct "${gateways[@]}"; do
  printf '| %-9s | %9s | %8s | %8s | %14s |\n' "$t" "${SDONE[$t]}" "${SP50[$t]}" "${SP99[$t]}" "$(( ${SP99[$t]} - ${SP99[direct]} ))"
done
echo
summary="summary:"
for t in direct "${gateways[@]}" nginx; do
  summary+=" ${t}_rps=${RPS[$t]} ${t}_p50=${P50[$t]} ${t}_p99=${P99[$t]} ${t}_open_p99=${RP99[$t]} ${t}_open_added=$(( ${RP99[$t]} - ${RP99[direct]} ))"
done
for t in direct "${gateways[@]}"; do
  summary+=" ${t}_sse_p99=${SP99[$t]} ${t}_sse_added=$(( ${SP99[$t]} - ${SP99[direct]} ))"
done
echo "$summary"
