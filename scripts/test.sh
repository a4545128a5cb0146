#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and integration tests against real
# MariaDB, RabbitMQ and Redis on loopback (started here if they are not running).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh --install
# rustup installs cargo under ~/.cargo/bin when the machine had none.
command -v cargo >/dev/null 2>&1 || export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# The Helm chart: rendered with the real Helm SDK and validated (Python, in a venv).
scripts/test-helm.sh -q 2>&1 | tee "$log" || status=$?
# The integration tests start the real binaries: build them first.
cargo build --workspace --bins --tests --quiet
cargo test --workspace --no-fail-fast -- --test-threads="${AEGIS_TEST_THREADS:-2}" 2>&1 | tee -a "$log" || status=$?
# One closing line for the whole suite (pytest prints one, cargo one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^[0-9]+ (passed|failed)/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "total: %d passed, %d failed\n", p, f }' "$log"
exit $status
