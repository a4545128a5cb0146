#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and integration tests against real
# MariaDB, RabbitMQ and Redis on loopback (started here if they are not running).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
# The Helm chart: rendered with the real Helm SDK and validated (Python, in a venv).
scripts/test-helm.sh -q
# The integration tests start the real binaries: build them first.
cargo build --workspace --bins --tests --quiet
cargo test --workspace --no-fail-fast -- --test-threads="${AEGIS_TEST_THREADS:-2}"
