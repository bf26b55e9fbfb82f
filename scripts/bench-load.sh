#!/usr/bin/env bash
# Benchmark (issue 5): one control plane under 1 000 simulated agents in 1 000 workspaces
# (heartbeats every 10 s, 25 s long-polls, progress and results) plus waves of 100 concurrent
# manual backups every 15 s and a reader of GET /api/v1/backups (~5/s). Builds the release
# binaries, then runs the load generator (tests/src/bin/bulwark-load.rs), which starts the real
# control-plane binary on a temporary data directory and prints a Markdown table: p50/p99/max
# per endpoint, control-plane CPU and RSS. Both processes share this machine's cores.
#   scripts/bench-load.sh                              # 1000 agents, 60 s
#   scripts/bench-load.sh --agents 200 --duration 30   # a quick run; --json for JSON
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p bulwark-control-plane -p bulwark-tests \
  --bin bulwark-control-plane --bin bulwark-load
# 1 000 agents hold about 2 000 connections (a long-poll and a heartbeat each), on both ends.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "open files: $(ulimit -n); $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
exec target/release/bulwark-load --control-plane target/release/bulwark-control-plane "$@"
