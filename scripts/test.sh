#!/usr/bin/env bash
# Runs every test: formatting, unit tests next to the code, and the end-to-end tests in tests/
# (real binaries against directories, a tmpfs that fills up, and a real S3 server).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
# The end-to-end tests run the agent binary, so build it first.
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
