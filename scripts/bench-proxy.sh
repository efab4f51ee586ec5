#!/usr/bin/env bash
# Proxy overhead of infergate, measured against a trivial upstream (gateway/examples/echo_upstream.rs
# answering a 1 KiB JSON), side by side with going direct and with nginx (Debian's; proxy_pass to an
# upstream block with keepalive, round robin). Everything binds 127.0.0.1. A measurement, not a test:
# run it by hand (it takes two to three minutes), and copy the tables into docs/BENCHMARKS.md.
#
# Phases: 0. the machine's scheduling floor (`bench_client jitter`: how late an idle thread wakes);
# 1. closed loop, wrk, interleaved rounds, with each proxy's CPU time per request, and a bare
# hyper proxy beside the gateway (gateway/examples/bare_proxy.rs: the floor of the gateway's stack,
# measured in this phase only); 2. open loop at half of infergate's wrk peak (`bench_client rate`: wrk2's
# method, latency from each request's scheduled time; OPEN_REPS interleaved rounds of direct,
# infergate, nginx, medians reported), and the time each request spent inside the proxy read off
# a loopback capture ("wire": the client's own lateness is not in it); 3. concurrent SSE streams, their starts staggered over one
# event interval and then all at once (a burst), SSE_ROUNDS interleaved rounds, with the CPU time
# the proxy and the upstream spent per event, and each event's delay across the proxy read off a
# loopback capture ("wire": the proxy's segment to the client minus the upstream's segment to the
# proxy, so the client's own wait for a CPU is not in it; needs tcpdump and root, WIRE=0 skips it).
#
#   scripts/bench-proxy.sh            # wrk at 2 threads / 64 connections, 3 rounds of 5 s; open loop 7 rounds of 3 s
#   WRK_ROUNDS=5 scripts/bench-proxy.sh   # more interleaved closed-loop rounds
#   NO_BUILD=1 PIN=1 PRIO=rt scripts/bench-proxy.sh   # the setting of docs/BENCHMARKS.md's 19:04 runs
#   DURATION=10 CONNS=128 STREAMS=1000 scripts/bench-proxy.sh
#   STREAMS=1000 CHUNKS=60 INTERVAL_MS=50 SSE_ROUNDS=3 scripts/bench-proxy.sh  # phase 3 (the defaults)
#   NO_BUILD=1 scripts/bench-proxy.sh   # use the binaries already in target/
#   PROFILE=release scripts/bench-proxy.sh   # the gateway as `cargo build --release` makes it
#
# The gateway is built with the `dist` profile by default (fat LTO, one codegen unit: what the
# image ships, Cargo.toml); its first build takes about 14 minutes on 2 cores. The helpers
# (echo upstream, bench client, the bare hyper floor) stay release builds.
#   WIRE=0 scripts/bench-proxy.sh       # no loopback capture in phases 2 and 3
#   WORKERS=1 scripts/bench-proxy.sh    # the gateway's --workers (default: one per core)
#   BASELINE_BIN=/tmp/infergate-old scripts/bench-proxy.sh  # also measure another build ("baseline")
#   INFERGATE_BIN=/tmp/infergate-abc123 NO_BUILD=1 scripts/bench-proxy.sh  # a copy of a known build
#   PIN=1 scripts/bench-proxy.sh        # load clients on CPU $CLIENT_CPUS (0), servers on $SERVER_CPUS (1)
#   PRIO=rt scripts/bench-proxy.sh      # every measured process SCHED_FIFO 10 (chrt; needs root)
#   PRIO=proxy scripts/bench-proxy.sh   # the proxies alone (gateways, nginx) SCHED_FIFO 10
#   OPEN_DURATION=3 OPEN_REPS=7 OPEN_CONNS=64 WARMUP=1 POISSON=1 scripts/bench-proxy.sh  # phase 2
#
# With PIN=1 every phase runs pinned (the peak that sets phase 2's rate too), the gateway then
# sees one core (--workers default: one per core) and nginx gets one worker per server core.
# PRIO=rt shields the measured processes from other work on a shared machine (compilers preempting
# them for milliseconds); it applies to every phase, clients and servers alike. The kernel's RT
# throttling still leaves other processes 5% of each core. (nice does not do this job: with
# autogroup scheduling, nice only weighs processes within one session against each other.) Under
# FIFO, threads of equal priority on one core do not time-slice: wrk's closed-loop p99 suffers.
# PRIO=proxy gives the CPU to the proxy under test whenever it has work, as a gateway with cores of
# its own has in production, while the upstream and the clients (which stand for other machines)
# share what is left: what the proxy adds is then its own work, not its wait behind the harness.
# Every proxy gets the same treatment; direct has no proxy.
#
# The last line, `summary: ...`, carries every figure as key=value for scripts that take medians.
#
# Needs wrk, nginx and tcpdump (scripts/install-tools.sh installs them), and taskset for PIN=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-5}
THREADS=${THREADS:-2}
WRK_ROUNDS=${WRK_ROUNDS:-3}
CONNS=${CONNS:-64}
STREAMS=${STREAMS:-1000}
CHUNKS=${CHUNKS:-60}
BURST_CHUNKS=${BURST_CHUNKS:-60}
SSE_ROUNDS=${SSE_ROUNDS:-3}
INTERVAL_MS=${INTERVAL_MS:-50}
WORKERS=${WORKERS:-0}
PROFILE=${PROFILE:-dist}
BASELINE_BIN=${BASELINE_BIN:-}
OPEN_DURATION=${OPEN_DURATION:-3}
OPEN_REPS=${OPEN_REPS:-7}
OPEN_CONNS=${OPEN_CONNS:-64}
WARMUP=${WARMUP:-1}
POISSON=${POISSON:-}
PIN=${PIN:-}
PRIO=${PRIO:-}
WIRE=${WIRE:-1}
CLIENT_CPUS=${CLIENT_CPUS:-0}
SERVER_CPUS=${SERVER_CPUS:-1}
log() { printf '[bench-proxy] %s\n' "$*" >&2; }

nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
command -v wrk >/dev/null || { log "wrk is missing: run scripts/install-tools.sh"; exit 1; }
[ -x "$nginx_bin" ] || { log "nginx is missing: run scripts/install-tools.sh"; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

if [ -z "${NO_BUILD:-}" ]; then
  log "building (the gateway: profile $PROFILE; the helpers: release)"
  (cd "$root" && cargo build --profile "$PROFILE" -q --bin infergate && cargo build --release -q -p infergate-gateway --example echo_upstream --example bench_client --example bare_proxy)
fi
# cli: prefix for load clients; srv: for the upstream; psrv: for the proxies (empty unless PIN or
# PRIO is set).
prio=(); pprio=()
case $PRIO in
  "") ;;
  rt) prio=(chrt -f 10); pprio=(chrt -f 10) ;;
  proxy) pprio=(chrt -f 10) ;;
  *) log "PRIO must be rt or proxy (or unset)"; exit 1 ;;
esac
cli=("${prio[@]}"); srv=("${prio[@]}"); psrv=("${pprio[@]}")
if [ -n "$PIN" ]; then
  cli+=(taskset -c "$CLIENT_CPUS"); srv+=(taskset -c "$SERVER_CPUS"); psrv+=(taskset -c "$SERVER_CPUS")
fi
if [ "$WIRE" != 0 ] && { ! command -v tcpdump >/dev/null || [ "$(id -u)" != 0 ]; }; then
  log "no loopback capture in phases 2 and 3: it needs tcpdump (scripts/install-tools.sh) and root"; WIRE=0
fi
bin="$root/target/release"
INFERGATE_BIN=${INFERGATE_BIN:-$root/target/$PROFILE/infergate}
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

load_before=$(uptime)
up=$(start sim "$tmp/up.out" "${srv[@]}" "$ex/echo_upstream" 127.0.0.1:0)
gw=$(start gateway "$tmp/gw.out" "${psrv[@]}" "$INFERGATE_BIN" gateway --model m --endpoints "http://$up" \
  --flavor vllm --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --workers "$WORKERS")
gateways=(infergate)
if [ -n "$BASELINE_BIN" ]; then
  base=$(start gateway "$tmp/base.out" "${psrv[@]}" "$BASELINE_BIN" gateway --model m --endpoints "http://$up" \
    --flavor vllm --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0)
  gateways+=(baseline)
fi
# The floor of the stack, with the proxies' CPU setting (its workers: one per core it may use).
hyper=$(start hyper "$tmp/hyper.out" "${psrv[@]}" "$ex/bare_proxy" "$up")
# start() runs in a subshell, so its pids come from $tmp/pids, in start order.
up_pid=$(sed -n 1p "$tmp/pids"); gw_pid=$(sed -n 2p "$tmp/pids"); base_pid=$(sed -n 3p "$tmp/pids")
hyper_pid=$(tail -n 1 "$tmp/pids")
ngx_port=$(free_port)
mkdir -p "$tmp/nginx"
ngx_workers=auto
[ -n "$PIN" ] && ngx_workers=$("${psrv[@]}" nproc)
cat >"$tmp/nginx.conf" <<NGINX
worker_processes $ngx_workers;
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
    listen 127.0.0.1:$ngx_port backlog=4096;
    location / {
      proxy_pass http://model;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
"${psrv[@]}" "$nginx_bin" -c "$tmp/nginx.conf" -p "$tmp/nginx" -g 'daemon off;' 2>"$tmp/nginx.err" &
ngx_master=$!
pids+=("$ngx_master")
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/"$ngx_port") 2>/dev/null && break
  sleep 0.05
done
ngx="127.0.0.1:$ngx_port"

# Sets a, the address of target $1, and procs, the processes whose CPU time is its (none for
# direct).
target_of() {
  case $1 in
    direct) a=$up; procs=() ;;
    infergate) a=$gw; procs=("$gw_pid") ;;
    baseline) a=$base; procs=("$base_pid") ;;
    hyper) a=$hyper; procs=("$hyper_pid") ;;
    nginx) a=$ngx; mapfile -t procs < <(pgrep -P "$ngx_master") ;;
  esac
}
# The CPU time (ns, schedstat, every thread) the processes given have used so far.
cpu_ns() {
  local p t s=0
  for p in "$@"; do
    for t in /proc/"$p"/task/*/schedstat; do read -r c _ <"$t" && s=$((s + c)); done 2>/dev/null
  done
  echo "$s"
}

# shellcheck source=scripts/bench-post.sh
. "$root/scripts/bench-post.sh"
write_post_lua "$tmp/post.lua"

# wrk phase -> "rps p50 p99 non-2xx requests" (latencies in microseconds).
run_wrk() {
  local url=$1
  "${cli[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$tmp/post.lua" "$url/v1/chat/completions" >"$tmp/wrk.out"
  awk '
    function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1000000; return v }
    /Requests\/sec/ { rps=$2 }
    /^ +50%/ { p50=us($2) }
    /^ +99%/ { p99=us($2) }
    /Non-2xx/ { bad=$NF }
    / requests in / { n=$1 }
    END { printf "%.0f %.0f %.0f %s %d\n", rps, p50, p99, (bad==""?0:bad), n }' "$tmp/wrk.out"
}

log "scheduling floor: bench_client jitter 3 (an idle thread waking every 100 us)"
jit=$("${cli[@]}" "$ex/bench_client" jitter 3)
kv() { sed -n "s/.*\b$1=\([0-9.a-z]*\).*/\1/p" <<<"$2"; }

# WRK_ROUNDS interleaved rounds (each target once per round, in turn), so that a slow spell of a
# shared machine falls on every target alike; each figure is the median over the rounds, and the
# ratio to nginx the median of the per-round ratios. The proxy's CPU time per request completed
# is what its throughput on a shared machine comes down to.
closed=(direct "${gateways[@]}" hyper nginx)
declare -A RPS P50 P99 BAD W CPU
for target in "${closed[@]}"; do
  target_of "$target"
  "${cli[@]}" wrk -t1 -c4 -d1s -s "$tmp/post.lua" "http://$a/v1/chat/completions" >/dev/null  # warm-up
done
for round in $(seq 1 "$WRK_ROUNDS"); do
  for target in "${closed[@]}"; do
    target_of "$target"
    log "wrk round $round/$WRK_ROUNDS, $target: ${THREADS} threads, ${CONNS} connections, ${DURATION}s"
    c0=$(cpu_ns "${procs[@]}")
    read -r r p50 p99 bad n < <(run_wrk "http://$a")
    c1=$(cpu_ns "${procs[@]}")
    W[rps,$target,$round]=$r; W[p50,$target,$round]=$p50; W[p99,$target,$round]=$p99
    BAD[$target]=$(( ${BAD[$target]:-0} + bad ))
    log "  req/s $r, p50 $p50 us, p99 $p99 us"
    if [ ${#procs[@]} -gt 0 ]; then  # direct has no proxy
      W[cpu,$target,$round]=$(awk -v ns=$((c1 - c0)) -v n="$n" 'BEGIN { printf "%.1f", (n > 0 ? ns / n / 1000 : 0) }')
      log "  proxy CPU ${W[cpu,$target,$round]} us per request"
    fi
  done
done
# The median of the arguments; MEDIAN_FMT (printf, default whole numbers) formats the mean of the
# two middle values when there is an even count.
median() { printf '%s\n' "$@" | sort -n | awk -v f="${MEDIAN_FMT:-%.0f}" '{a[NR]=$1} END { if (NR % 2) print a[(NR+1)/2]; else printf f "\n", (a[NR/2]+a[NR/2+1])/2 }'; }
declare -A RATIO RPS_ALL CPU_ALL
for target in "${closed[@]}"; do
  rs=(); p50s=(); p99s=(); ratios=(); cpus=()
  for round in $(seq 1 "$WRK_ROUNDS"); do
    rs+=("${W[rps,$target,$round]}"); p50s+=("${W[p50,$target,$round]}"); p99s+=("${W[p99,$target,$round]}")
    cpus+=("${W[cpu,$target,$round]:--}")
    ratios+=("$(awk -v a="${W[rps,$target,$round]}" -v b="${W[rps,nginx,$round]}" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')")
  done
  RPS[$target]=$(median "${rs[@]}"); P50[$target]=$(median "${p50s[@]}"); P99[$target]=$(median "${p99s[@]}")
  RATIO[$target]=$(MEDIAN_FMT=%.3f median "${ratios[@]}")
  RPS_ALL[$target]=$(IFS=,; echo "${rs[*]}")
  CPU[$target]=-; CPU_ALL[$target]=-
  [ -z "${W[cpu,$target,1]:-}" ] || { CPU[$target]=$(MEDIAN_FMT=%.1f median "${cpus[@]}"); CPU_ALL[$target]=$(IFS=,; echo "${cpus[*]}"); }
done

# A loopback capture: $1 the filter, $2 the snap length. Every run of phases 2 and 3 is captured,
# direct included, so that the capture's own CPU cost falls on every target alike.
up_port=${up##*:}
capture_start() {
  rm -f "$tmp/cap.pcap"
  tcpdump -i lo -nn -s "$2" -B 65536 -w "$tmp/cap.pcap" "$1" 2>"$tmp/tcpdump.err" &
  capture_pid=$!
  for _ in $(seq 1 100); do grep -q listening "$tmp/tcpdump.err" && break; sleep 0.05; done
  sleep 0.2  # a margin: the run must not start before the capture does
}
# Stops the capture (not in a subshell: it waits for tcpdump to write its file); sets
# capture_dropped to the segments the kernel dropped from it.
capture_stop() {
  # tcpdump reads the kernel's ring a block at a time, a block when full or 1 s old (cheaper during
  # the run than --immediate-mode's wake per packet), and on SIGINT drops the block not yet read.
  sleep 1.1
  kill -INT "$capture_pid"; wait "$capture_pid" || true
  capture_dropped=$(sed -n 's/^\([0-9]*\) packets dropped by kernel.*/\1/p' "$tmp/tcpdump.err")
}
capture_text() { tcpdump -r "$tmp/cap.pcap" -nn -tt -q -A 2>/dev/null; }
# The wire figures of the run just captured (after capture_stop): `bench_client $1 ARGS...` over
# the capture, plus the segments the kernel dropped; $no_wire when its count ($2) is 0.
wire_of() {
  local reader=$1 count=$2 out; shift 2
  out="$(capture_text | "$ex/bench_client" "$reader" "$@") wire_dropped=${capture_dropped:-?}"
  if [ "$(kv "$count" "$out")" = 0 ]; then
    log "  the capture holds nothing of the measured window: no wire figures for this run"
    out=$no_wire
  fi
  echo "$out"
}
# A run without wire figures: direct, WIRE=0, or a capture that holds nothing of the run.
no_wire="wire_p50_us=- wire_p90_us=- wire_p99_us=- wire_p999_us=- wire_events=- wire_requests=- wire_rps=- wire_unmatched=- wire_dropped=-"
# The median of the numeric arguments, or - when there is none.
median_or_dash() {
  local v=() x
  for x in "$@"; do [[ $x =~ ^[0-9]+$ ]] && v+=("$x"); done
  if [ ${#v[@]} -gt 0 ]; then median "${v[@]}"; else echo -; fi
}

half=$(( ${RPS[infergate]} / 2 ))
open_args=(--conns "$OPEN_CONNS" --warmup "$WARMUP")
[ -n "$POISSON" ] && open_args+=(--poisson)
# CPU accounting over phase 2, to state how busy the machine was with other work: machine-wide
# busy and steal ticks from /proc/stat, minus what this run's processes used (servers, nginx
# workers, and the clients this script has waited for: its cutime + cstime). USER_HZ = 100.
machine_ticks() { awk '/^cpu /{ print $2+$3+$4+$7+$8, $9 }' /proc/stat; }
our_ticks() {
  local p
  { for p in $(cat "$tmp/pids") "${pids[@]}" $(pgrep -P "${pids[0]}"); do
      awk '{ sub(/^.*\) /, ""); print $12+$13 }' "/proc/$p/stat" 2>/dev/null
    done
    awk '{ sub(/^.*\) /, ""); print $14+$15 }' "/proc/$$/stat"
  } | awk '{ s += $1 } END { print s+0 }'
}
read -r busy0 steal0 < <(machine_ticks); ours0=$(our_ticks); t0=$(date +%s%N)
# Per target and round: O[key,target,round] for the keys bench_client prints.
declare -A O
open_valid=yes
for round in $(seq 1 "$OPEN_REPS"); do
  for target in direct "${gateways[@]}" nginx; do
    target_of "$target"
    log "open loop round $round/$OPEN_REPS, $target at $half req/s for ${OPEN_DURATION}s (+${WARMUP}s warm-up)"
    # Every segment with data to or from the upstream and the proxy: the four legs of each request.
    [ "$WIRE" != 0 ] && capture_start "tcp and (port $up_port or port ${a##*:}) and greater 80" 512
    read -r _ st0 < <(machine_ticks)
    line=$("${cli[@]}" "$ex/bench_client" rate "http://$a/v1/chat/completions" "$half" "$OPEN_DURATION" "${open_args[@]}")
    read -r _ st1 < <(machine_ticks)
    O[steal,$target,$round]=$(( (st1 - st0) * 10 ))  # ms of CPU time stolen by the hypervisor, both cores
    wire=$no_wire
    if [ "$WIRE" != 0 ]; then
      capture_stop
      [ $target = direct ] ||
        wire=$(wire_of wire-http wire_requests "${a##*:}" "$up_port" "$(kv first_measured_id "$line")")
    fi
    log "  $line steal_ms=${O[steal,$target,$round]} $wire"
    for k in p50_us p90_us p99_us p999_us rps unmatched dropped; do O[w$k,$target,$round]=$(kv "wire_$k" "$wire"); done
    for k in achieved errors p50_us p90_us p99_us p999_us max_us late_client late_backlog client_cpu_pct valid; do
      O[$k,$target,$round]=$(kv "$k" "$line")
    done
    if [ "${O[valid,$target,$round]}" != yes ]; then
      open_valid=no
      log "  NOT VALID: round $round $target: late_client=${O[late_client,$target,$round]} errors=${O[errors,$target,$round]}"
    fi
  done
done
read -r busy1 steal1 < <(machine_ticks); ours1=$(our_ticks); t1=$(date +%s%N)
cap=$(( ($(nproc) * (t1 - t0)) / 10000000 ))  # machine capacity in ticks over phase 2
others_pct=$(awk -v b=$((busy1 - busy0)) -v o=$((ours1 - ours0)) -v c="$cap" 'BEGIN { v = 100*(b-o)/c; printf "%.0f", (v < 0 ? 0 : v) }')
ours_pct=$(awk -v o=$((ours1 - ours0)) -v c="$cap" 'BEGIN { printf "%.0f", 100*o/c }')
steal_pct=$(awk -v s=$((steal1 - steal0)) -v c="$cap" 'BEGIN { printf "%.1f", 100*s/c }')
# A round is clean when the client was healthy for every target in it.
clean_rounds=()
for r in $(seq 1 "$OPEN_REPS"); do
  ok=yes
  for t in direct "${gateways[@]}" nginx; do [ "${O[valid,$t,$r]}" = yes ] || ok=no; done
  [ $ok = yes ] && clean_rounds+=("$r")
done
# Medians over the rounds; "added" is the median of the per-round differences to direct.
declare -A RP50 RP99 RACH RADD RADD50 RADD90 RCLEAN RLATE RBACK RERR RCPU RP99S RSTEAL
for t in direct "${gateways[@]}" nginx; do
  for k in p50_us p90_us p99_us p999_us max_us achieved client_cpu_pct; do
    vals=(); for r in $(seq 1 "$OPEN_REPS"); do vals+=("${O[$k,$t,$r]}"); done
    O[$k,$t,med]=$(median "${vals[@]}")
  done
  adds=(); adds50=(); adds90=(); lates=0; backs=0; errs=0; p99s=(); cadds=(); steals=()
  for r in $(seq 1 "$OPEN_REPS"); do
    adds+=($(( ${O[p99_us,$t,$r]} - ${O[p99_us,direct,$r]} )))
    adds50+=($(( ${O[p50_us,$t,$r]} - ${O[p50_us,direct,$r]} )))
    adds90+=($(( ${O[p90_us,$t,$r]} - ${O[p90_us,direct,$r]} )))
    lates=$(( lates + ${O[late_client,$t,$r]} )); backs=$(( backs + ${O[late_backlog,$t,$r]} ))
    errs=$(( errs + ${O[errors,$t,$r]} )); p99s+=("${O[p99_us,$t,$r]}"); steals+=("${O[steal,$t,$r]}")
  done
  RP50[$t]=${O[p50_us,$t,med]}; RP99[$t]=${O[p99_us,$t,med]}; RACH[$t]=${O[achieved,$t,med]}
  for r in "${clean_rounds[@]}"; do cadds+=($(( ${O[p99_us,$t,$r]} - ${O[p99_us,direct,$r]} ))); done
  RCLEAN[$t]=-; [ ${#cadds[@]} -gt 0 ] && RCLEAN[$t]=$(median "${cadds[@]}")
  RADD50[$t]=$(median "${adds50[@]}"); RADD90[$t]=$(median "${adds90[@]}")
  RADD[$t]=$(median "${adds[@]}"); RLATE[$t]=$lates; RBACK[$t]=$backs; RERR[$t]=$errs
  RCPU[$t]=${O[client_cpu_pct,$t,med]}; RP99S[$t]=$(IFS=,; echo "${p99s[*]}"); RSTEAL[$t]=$(IFS=,; echo "${steals[*]}")
  # On the wire: medians over the rounds that have figures.
  wp99s=(); lost=0
  for k in p50_us p90_us p99_us p999_us rps; do
    vals=(); for r in $(seq 1 "$OPEN_REPS"); do vals+=("${O[w$k,$t,$r]}"); done
    O[w$k,$t,med]=$(median_or_dash "${vals[@]}")
  done
  for r in $(seq 1 "$OPEN_REPS"); do
    wp99s+=("${O[wp99_us,$t,$r]:--}")
    lost=$(( lost + ${O[wunmatched,$t,$r]:-0} + ${O[wdropped,$t,$r]:-0} ))
  done
  O[wp99s,$t]=$(IFS=,; echo "${wp99s[*]}"); O[wlost,$t]=$lost
done

# Two starts (bench_client's SseStart): staggered, the streams' events spread evenly over each
# interval (what the path adds to one event); burst, all streams' events at once (how long a
# burst of $STREAMS events takes to drain).
# Figures count the events sent while all streams were open (bench_client's window: the ramp,
# when the path also opens $STREAMS connections, is reported apart). A burst start opens every
# connection at once, so its ramp is longer: its streams carry $BURST_CHUNKS events.
# SSE_ROUNDS interleaved rounds, as for the other phases: the tail of a few seconds of events on
# a shared machine moves by milliseconds from one run to the next. Each run also reads the CPU
# time (schedstat, every thread) that the proxy and the upstream spent per event delivered.
per_event() { awk -v ns="$1" -v n="$2" 'BEGIN { printf "%.1f", ns / n / 1000 }'; }  # ns over n events -> us
declare -A S
for round in $(seq 1 "$SSE_ROUNDS"); do
  for mode in staggered burst; do
    flag=(); n=$CHUNKS
    [ $mode = burst ] && flag=(--burst) && n=$BURST_CHUNKS
    for target in direct "${gateways[@]}" nginx; do
      target_of "$target"
      log "SSE round $round/$SSE_ROUNDS, $STREAMS concurrent streams via $target ($n chunks, ${INTERVAL_MS} ms apart, $mode)"
      # The data segments the upstream sends, and those sent from the proxy's port (for direct,
      # the upstream's own).
      [ "$WIRE" != 0 ] && capture_start "tcp and (src port $up_port or src port ${a##*:}) and greater 80" 1024
      c0=$(cpu_ns "${procs[@]}"); u0=$(cpu_ns "$up_pid")
      line=$("${cli[@]}" "$ex/bench_client" sse "http://$a/v1/chat/completions" "$STREAMS" "$n" "$INTERVAL_MS" "${flag[@]}")
      c1=$(cpu_ns "${procs[@]}"); u1=$(cpu_ns "$up_pid")
      wire=$no_wire
      if [ "$WIRE" != 0 ]; then
        capture_stop
        [ $target = direct ] ||
          wire=$(wire_of wire wire_events "${a##*:}" "$up_port" "$(kv window_from_ns "$line")" "$(kv window_to_ns "$line")")
      fi
      ev=$(kv all_chunks "$line"); [ "${ev:-0}" -gt 0 ] || ev=1
      S[cpu,$target,$mode,$round]=$(per_event $((c1 - c0)) "$ev"); S[ucpu,$target,$mode,$round]=$(per_event $((u1 - u0)) "$ev")
      log "  $line proxy_cpu_us_per_event=${S[cpu,$target,$mode,$round]} upstream_cpu_us_per_event=${S[ucpu,$target,$mode,$round]} $wire"
      for k in p50_us p99_us complete chunks all_p99_us ramp_ms; do S[$k,$target,$mode,$round]=$(kv "$k" "$line"); done
      for k in p50_us p99_us p999_us unmatched dropped; do S[w$k,$target,$mode,$round]=$(kv "wire_$k" "$wire"); done
    done
  done
done
# Medians over the rounds; "added" is the median of the per-round differences to direct.
declare -A SP50 SP99 SADD SDONE SN SALL SRAMP SCPU SUCPU SP99S WP99S WLOST
for mode in staggered burst; do
  for t in direct "${gateways[@]}" nginx; do
    for k in p50_us p99_us chunks all_p99_us ramp_ms cpu ucpu wp50_us wp99_us wp999_us; do
      vals=(); for r in $(seq 1 "$SSE_ROUNDS"); do vals+=("${S[$k,$t,$mode,$r]}"); done
      fmt=%.0f; case $k in cpu|ucpu) fmt=%.1f ;; esac
      S[$k,$t,$mode,med]=$(MEDIAN_FMT=$fmt median "${vals[@]}")
    done
    adds=(); p99s=(); done_all=0; wp99s=(); lost=0
    for r in $(seq 1 "$SSE_ROUNDS"); do
      adds+=($(( ${S[p99_us,$t,$mode,$r]} - ${S[p99_us,direct,$mode,$r]} )))
      p99s+=("${S[p99_us,$t,$mode,$r]}"); done_all=$(( done_all + ${S[complete,$t,$mode,$r]} ))
      wp99s+=("${S[wp99_us,$t,$mode,$r]:--}")
      lost=$(( lost + ${S[wunmatched,$t,$mode,$r]:-0} + ${S[wdropped,$t,$mode,$r]:-0} ))
    done
    WP99S[$t,$mode]=$(IFS=,; echo "${wp99s[*]}"); WLOST[$t,$mode]=$lost
    SP50[$t,$mode]=${S[p50_us,$t,$mode,med]}; SP99[$t,$mode]=${S[p99_us,$t,$mode,med]}; SADD[$t,$mode]=$(median "${adds[@]}")
    SDONE[$t,$mode]=$done_all; SN[$t,$mode]=${S[chunks,$t,$mode,med]}; SALL[$t,$mode]=${S[all_p99_us,$t,$mode,med]}
    SRAMP[$t,$mode]=${S[ramp_ms,$t,$mode,med]}; SCPU[$t,$mode]=${S[cpu,$t,$mode,med]}; SUCPU[$t,$mode]=${S[ucpu,$t,$mode,med]}
    SP99S[$t,$mode]=$(IFS=,; echo "${p99s[*]}")
  done
done

echo
load_after=$(uptime)
echo "machine: $(nproc) cores, $(uname -sr); $(date -u +%Y-%m-%dT%H:%MZ)"
echo "load before: ${load_before#*load average: }; after: ${load_after#*load average: } (1, 5, 15 min)"
if [ -n "$PIN" ]; then
  echo "pinned: load clients (wrk, bench_client) on CPU $CLIENT_CPUS; upstream, gateway, nginx on CPU $SERVER_CPUS (nginx workers: $ngx_workers)"
else
  echo "not pinned: clients and servers share all cores"
fi
case $PRIO in
  rt) echo "priority: every measured process ${prio[*]}" ;;
  proxy) echo "priority: the proxies (gateways, nginx) ${pprio[*]}; upstream and clients default (SCHED_OTHER, nice 0)" ;;
  *) echo "priority: default (SCHED_OTHER, nice 0)" ;;
esac
echo "scheduling floor (idle thread, 100 us period, 3 s): p50 $(kv p50_us "$jit") us, p99 $(kv p99_us "$jit") us, max $(kv max_us "$jit") us, late >1 ms $(kv late_pct "$jit")%"
echo
echo "Closed loop (wrk -t$THREADS -c$CONNS -d${DURATION}s, 1 KiB JSON POST -> 1 KiB JSON; medians of $WRK_ROUNDS interleaved rounds; vs nginx: median of the per-round ratios; proxy CPU: its threads' CPU time per request completed; hyper: the bare hyper proxy, the stack's floor):"
printf '| %-9s | %9s | %8s | %8s | %8s | %-26s | %10s | %-20s | %7s |\n' target "req/s" "vs nginx" "p50 us" "p99 us" "req/s per round" "cpu us/req" "cpu per round" non-2xx
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' ----------- ----------- ---------- ---------- ---------- ---------------------------- ------------ ---------------------- ---------
for t in "${closed[@]}"; do
  printf '| %-9s | %9s | %8s | %8s | %8s | %-26s | %10s | %-20s | %7s |\n' "$t" "${RPS[$t]}" "${RATIO[$t]}" "${P50[$t]}" "${P99[$t]}" "${RPS_ALL[$t]}" "${CPU[$t]}" "${CPU_ALL[$t]}" "${BAD[$t]}"
done
echo
echo "Open loop at half of infergate's peak ($half req/s, $OPEN_CONNS connections, ${OPEN_DURATION}s + ${WARMUP}s warm-up, $([ -n "$POISSON" ] && echo Poisson || echo even) arrivals; latency from the scheduled time; median of $OPEN_REPS interleaved rounds; late: sends >1 ms after their time, summed):"
printf '| %-9s | %8s | %7s | %7s | %7s | %7s | %7s | %9s | %9s | %9s | %11s | %-34s | %6s | %7s | %5s | %4s |\n' \
  target achieved "p50 us" "p90 us" "p99 us" "p99.9us" "max us" "p50 added" "p90 added" "p99 added" "p99 a.clean" "p99 per round" "late c" "late bl" "cpu %" err
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' ----------- ---------- --------- --------- --------- --------- --------- ----------- ----------- ----------- ------------- ------------------------------------ -------- --------- ------- ------
for t in direct "${gateways[@]}" nginx; do
  printf '| %-9s | %8s | %7s | %7s | %7s | %7s | %7s | %9s | %9s | %9s | %11s | %-34s | %6s | %7s | %5s | %4s |\n' "$t" "${RACH[$t]}" "${RP50[$t]}" \
    "${O[p90_us,$t,med]}" "${RP99[$t]}" "${O[p999_us,$t,med]}" "${O[max_us,$t,med]}" "${RADD50[$t]}" "${RADD90[$t]}" "${RADD[$t]}" \
    "${RCLEAN[$t]}" "${RP99S[$t]}" "${RLATE[$t]}" "${RBACK[$t]}" "${RCPU[$t]}" "${RERR[$t]}"
done
echo "CPU time stolen by the hypervisor during each round (ms, both cores; /proc/stat, 10 ms ticks):"
for t in direct "${gateways[@]}" nginx; do printf '  %-9s %s\n' "$t" "${RSTEAL[$t]}"; done
echo "clean rounds (client healthy for every target): ${#clean_rounds[@]} of $OPEN_REPS${clean_rounds[*]:+ (}$(IFS=,; echo "${clean_rounds[*]}")${clean_rounds[*]:+)}"
echo "CPU during the open loop, share of the machine: this run's processes ${ours_pct}%, other processes ${others_pct}%, steal ${steal_pct}%"
if [ "$open_valid" = yes ]; then
  echo "open loop: client healthy (in every round, late_client <= 0.5% of requests and no errors)"
else
  echo "open loop: NOT VALID: in some round the client sent more than 0.5% of requests >1 ms late by its own fault, or saw errors (see the log above)"
fi
if [ "$WIRE" != 0 ]; then
  echo
  echo "The same runs on the wire (loopback capture): the time each measured request spent inside the proxy, (request out to the upstream - request in from the client) + (answer out to the client - answer in from the upstream), each at the message's last segment; the client's own lateness is not in it; medians of $OPEN_REPS rounds; req/s: the rate requests came in at; lost: requests seen coming in and missing on a later leg, plus segments the kernel dropped from the capture, over all rounds:"
  printf '| %-9s | %8s | %7s | %7s | %7s | %8s | %-34s | %6s |\n' target "req/s" "p50 us" "p90 us" "p99 us" "p99.9 us" "p99 per round" lost
  printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' ----------- ---------- --------- --------- --------- ---------- ------------------------------------ --------
  for t in "${gateways[@]}" nginx; do
    printf '| %-9s | %8s | %7s | %7s | %7s | %8s | %-34s | %6s |\n' "$t" "${O[wrps,$t,med]}" "${O[wp50_us,$t,med]}" "${O[wp90_us,$t,med]}" \
      "${O[wp99_us,$t,med]}" "${O[wp999_us,$t,med]}" "${O[wp99s,$t]}" "${O[wlost,$t]}"
  done
fi
echo
echo "$STREAMS concurrent SSE streams, events ${INTERVAL_MS} ms apart (chunk delivery delay, send -> receive, of the events sent while all $STREAMS streams were open; staggered: starts spread over one interval, $CHUNKS events per stream; burst: all at once, $BURST_CHUNKS events; ramp: until the last stream's head, with its own p99; medians of $SSE_ROUNDS interleaved rounds, added: median of the per-round differences to direct; complete: streams that reached [DONE], over all rounds; CPU: us per event delivered, the proxy's threads and the upstream's):"
printf '| %-9s | %-9s | %9s | %8s | %8s | %8s | %12s | %-20s | %8s | %13s | %9s | %9s |\n' target start complete events "p50 us" "p99 us" "p99 added us" "p99 per round" "ramp ms" "ramp+all p99" "proxy cpu" "up cpu"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' ----------- ----------- ----------- ---------- ---------- ---------- -------------- ---------------------- ---------- --------------- ----------- -----------
for mode in staggered burst; do
  for t in direct "${gateways[@]}" nginx; do
    printf '| %-9s | %-9s | %9s | %8s | %8s | %8s | %12s | %-20s | %8s | %13s | %9s | %9s |\n' "$t" "$mode" "${SDONE[$t,$mode]}" "${SN[$t,$mode]}" \
      "${SP50[$t,$mode]}" "${SP99[$t,$mode]}" "${SADD[$t,$mode]}" "${SP99S[$t,$mode]}" "${SRAMP[$t,$mode]}" "${SALL[$t,$mode]}" "${SCPU[$t,$mode]}" "${SUCPU[$t,$mode]}"
  done
done
if [ "$WIRE" != 0 ]; then
  echo
  echo "The same runs on the wire (loopback capture): each event's delay across the proxy, from the upstream's segment carrying it to the proxy's segment carrying it on to the client; the events sent while all streams were open; medians of $SSE_ROUNDS rounds; lost: events seen coming in and never going out in the capture, plus segments the kernel dropped from it, over all rounds:"
  printf '| %-9s | %-9s | %8s | %8s | %9s | %-20s | %6s |\n' target start "p50 us" "p99 us" "p99.9 us" "p99 per round" lost
  printf '|%s|%s|%s|%s|%s|%s|%s|\n' ----------- ----------- ---------- ---------- ----------- ---------------------- --------
  for mode in staggered burst; do
    for t in "${gateways[@]}" nginx; do
      printf '| %-9s | %-9s | %8s | %8s | %9s | %-20s | %6s |\n' "$t" "$mode" "${S[wp50_us,$t,$mode,med]}" "${S[wp99_us,$t,$mode,med]}" \
        "${S[wp999_us,$t,$mode,med]}" "${WP99S[$t,$mode]}" "${WLOST[$t,$mode]}"
    done
  done
fi
echo
summary="summary:"
for t in direct "${gateways[@]}" nginx; do
  summary+=" ${t}_rps=${RPS[$t]} ${t}_rps_vs_nginx=${RATIO[$t]} ${t}_p50=${P50[$t]} ${t}_p99=${P99[$t]} ${t}_open_p99=${RP99[$t]} ${t}_open_added=${RADD[$t]}"
  summary+=" ${t}_open_p50_added=${RADD50[$t]} ${t}_open_p90_added=${RADD90[$t]} ${t}_open_added_clean=${RCLEAN[$t]}"
  summary+=" ${t}_open_p50=${RP50[$t]} ${t}_open_achieved=${RACH[$t]} ${t}_open_late_client=${RLATE[$t]} ${t}_open_late_backlog=${RBACK[$t]}"
  [ $t = direct ] || [ "$WIRE" = 0 ] ||
    summary+=" ${t}_open_wire_p50=${O[wp50_us,$t,med]} ${t}_open_wire_p99=${O[wp99_us,$t,med]}"
done
for t in direct "${gateways[@]}" nginx; do
  summary+=" ${t}_sse_p99=${SP99[$t,staggered]} ${t}_sse_added=${SADD[$t,staggered]}"
  summary+=" ${t}_sse_burst_p99=${SP99[$t,burst]} ${t}_sse_burst_added=${SADD[$t,burst]}"
  summary+=" ${t}_sse_events=${SN[$t,staggered]} ${t}_sse_all_p99=${SALL[$t,staggered]} ${t}_sse_ramp_ms=${SRAMP[$t,staggered]}"
  summary+=" ${t}_sse_cpu_us=${SCPU[$t,staggered]} ${t}_sse_burst_cpu_us=${SCPU[$t,burst]}"
  [ $t = direct ] || [ "$WIRE" = 0 ] ||
    summary+=" ${t}_sse_wire_p99=${S[wp99_us,$t,staggered,med]} ${t}_sse_burst_wire_p99=${S[wp99_us,$t,burst,med]}"
done
load1=${load_after#*load average: }; load1=${load1%%,*}
summary+=" hyper_rps=${RPS[hyper]} hyper_rps_vs_nginx=${RATIO[hyper]}"
for t in "${closed[@]}"; do [ $t = direct ] || summary+=" ${t}_cpu_us_per_req=${CPU[$t]}"; done
summary+=" open_clean_rounds=${#clean_rounds[@]} open_rounds=$OPEN_REPS others_cpu_pct=$others_pct ours_cpu_pct=$ours_pct steal_pct=$steal_pct"
summary+=" open_rps=$half open_valid=$open_valid pin=${PIN:-0} prio=${PRIO:-none} jitter_late_pct=$(kv late_pct "$jit") load1=$load1"
echo "$summary"
