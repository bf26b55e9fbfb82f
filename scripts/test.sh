#!/usr/bin/env bash
# Runs every test: formatting, unit tests next to the code, and the end-to-end tests in tests/
# (real binaries against directories, a tmpfs that fills up, and a real S3 server).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
# CI builds once from scratch: incremental caches would only cost disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
# The end-to-end tests run the agent binary, so build it first, together with the tests: one
# invocation resolves dev-dependency features once, so nextest does not compile the crates again.
cargo build --workspace --bins --tests --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
