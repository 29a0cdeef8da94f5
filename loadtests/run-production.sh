#!/usr/bin/env bash
# The product as it is deployed, in one run, with its invariants asserted: two release
# replicas, redis-server, the Bolt graph server with learning on, tracing always_on to a
# real OTLP receiver, k6 from 200 req/s to saturation and back (half cacheable), clients
# with a timeout shorter than an agent's latency, SSE and WebSocket clients leaving
# mid-batch, hostile bodies. See loadtests/run_production.py for what is checked; the
# figures go to docs/BENCHMARKS.md.
# Usage: loadtests/run-production.sh [path/to/myriad-orchestrator]   (default: release build)
#        PEAK_RATE=3000 START_RATE=200 STAGE_S=15 KEEP_LOGS=1 loadtests/run-production.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/myriad-orchestrator}
[ -x "$BIN" ] || cargo build --release --locked
exec python3 loadtests/run_production.py "$BIN" --out "${OUT:-/tmp/myriad-production.json}"
