#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine (idempotent).
set -euo pipefail

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)

if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  # A vanished .deb fails an install once; a plain retry succeeds.
  apt-get install -y -qq "${need_apt[@]}" || apt-get install -y -qq "${need_apt[@]}"
fi
