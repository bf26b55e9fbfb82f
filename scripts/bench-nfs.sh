#!/usr/bin/env bash
# Benchmark: backup and restore through bulwark-agent's userspace NFS client to a real
# NFS-Ganesha export on loopback, against `nfs-cp` (libnfs) of the same bytes over the same
# protocol and against a local directory; plus gc time per 100 000 chunks on the export.
#   scripts/bench-nfs.sh            # BENCH_MIB=512 BENCH_GC_CHUNKS=100000
# Needs root (Ganesha). Results: a Markdown table on stdout (recorded in docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -q -p bulwark-agent -p bulwark-tests --bin bulwark-agent --bin bulwark-bench-nfs
exec target/release/bulwark-bench-nfs
