#!/usr/bin/env bash
# Benchmark (issue 11): a backup into a repository of ten million chunks, before and after the
# compact known-chunk index. The repository's size is synthetic: core/examples/bench_known_chunks.rs
# pads the real listing of `chunks/` with generated chunk names, so the backup learns of ten million
# stored chunks without 10 TB on disk. Each run is one process (one backup) under GNU time; the
# example prints peak RSS (VmHWM), the time to start the backup (lease + listing + index) and the
# whole backup's time. "before" is the code at OLD_REV, built from a temporary git worktree with the
# example copied in (its `new-api` lines removed: that code has no streaming listing).
#   scripts/bench-known-chunks.sh     # DUMP_MIB=1024 SYNTHETIC=10000000 ROUNDS=3 OLD_REV=c233417^
# CARGO_TARGET_DIR is honoured. The old tree builds into its own target directory (OLD_TARGET_DIR,
# default $target/bench-old-tree): cargo names a workspace crate's artifacts by its path relative to
# the workspace, so two checkouts sharing one target directory would reuse each other's builds.
# BULWARK_GEN=path skips building bulwark-gen.
set -euo pipefail
cd "$(dirname "$0")/.."
DUMP_MIB=${DUMP_MIB:-1024}
SYNTHETIC=${SYNTHETIC:-10000000}
ROUNDS=${ROUNDS:-3}
OLD_REV=${OLD_REV:-c233417^}
dir=${BENCH_DIR:-/tmp/bulwark-bench-known}
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
old_target=${OLD_TARGET_DIR:-$target/bench-old-tree}
rm -rf "$dir" && mkdir -p "$dir"
command -v /usr/bin/time >/dev/null || BULWARK_SETUP_BENCH=1 scripts/setup.sh

echo "building (this tree, then $OLD_REV in a worktree)" >&2
cargo build --release --locked -q --target-dir "$target" -p bulwark-core --example bench_known_chunks
cp "$target/release/examples/bench_known_chunks" "$dir/bench-new"
gen=${BULWARK_GEN:-}
if [ -z "$gen" ]; then
  cargo build --locked -q --target-dir "$target" -p bulwark-tests --bin bulwark-gen
  gen="$target/debug/bulwark-gen"
fi
git worktree add --detach "$dir/old-tree" "$OLD_REV" >/dev/null 2>&1
trap 'git -C "$root" worktree remove --force "$dir/old-tree" 2>/dev/null || true' EXIT
mkdir -p "$dir/old-tree/core/examples"
sed '/new-api:begin/,/new-api:end/d' core/examples/bench_known_chunks.rs \
  > "$dir/old-tree/core/examples/bench_known_chunks.rs"
(cd "$dir/old-tree" && cargo build --release --locked -q --target-dir "$old_target" \
  -p bulwark-core --example bench_known_chunks)
cp "$old_target/release/examples/bench_known_chunks" "$dir/bench-old"

echo "generating $DUMP_MIB MiB of dump text" >&2
"$gen" dump "$DUMP_MIB" "$dir/dump.sql" 1

# run LABEL BIN SYNTHETIC REPO: one backup; appends its JSON line to $dir/results.jsonl.
run() {
  sync
  /usr/bin/time -f "%M" -o "$dir/time" "$2" "$4" "$dir/dump.sql" "$3" > "$dir/out" 2> "$dir/err" || {
    echo "FAILED: $1" >&2; cat "$dir/err" >&2; exit 1; }
  python3 -c "import json,sys; d=json.load(open('$dir/out')); d['label']='$1'; d['time_maxrss_kib']=int(open('$dir/time').read().split()[-1]); print(json.dumps(d))" >> "$dir/results.jsonl"
  echo "$1: $(cat "$dir/out")" >&2
}
# Rounds take turns between the versions: this VM's speed swings between minutes.
for round in $(seq "$ROUNDS"); do
  for v in old new; do
    rm -rf "$dir/repo-$v"
    run "$v first" "$dir/bench-$v" "$SYNTHETIC" "$dir/repo-$v"
    run "$v second" "$dir/bench-$v" "$SYNTHETIC" "$dir/repo-$v"
  done
  rm -rf "$dir/repo-base"
  run "base first" "$dir/bench-new" 0 "$dir/repo-base"
  run "base second" "$dir/bench-new" 0 "$dir/repo-base"
done
rm -rf "$dir"/repo-*

python3 - "$dir/results.jsonl" "$SYNTHETIC" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
n = int(sys.argv[2])
def med(label, key):
    return statistics.median(r[key] for r in rows if r["label"] == label)
print(f"| measurement (median of {len(rows) // 6} rounds) | before: full id set | after: prefix index | no stored chunks (after) |")
print("|---|---|---|---|")
for run, what in (("first", "first backup (every chunk new)"), ("second", "second backup of the same dump (every chunk reused)")):
    print(f"| {what}: peak RSS, MiB | {med('old ' + run, 'peak_rss_mib'):.0f} | {med('new ' + run, 'peak_rss_mib'):.0f} | {med('base ' + run, 'peak_rss_mib'):.0f} |")
    print(f"| {what}: starting the backup (lease, listing, index), s | {med('old ' + run, 'start_backup_secs'):.2f} | {med('new ' + run, 'start_backup_secs'):.2f} | {med('base ' + run, 'start_backup_secs'):.2f} |")
    print(f"| {what}: whole backup, s | {med('old ' + run, 'backup_secs'):.2f} | {med('new ' + run, 'backup_secs'):.2f} | {med('base ' + run, 'backup_secs'):.2f} |")
    print(f"| {what}: throughput, MiB/s | {med('old ' + run, 'mib_per_sec'):.0f} | {med('new ' + run, 'mib_per_sec'):.0f} | {med('base ' + run, 'mib_per_sec'):.0f} |")
new = [r for r in rows if r["label"] == "new second"][-1]["dedup"]
print()
print(f"Synthetic chunks listed: {n:,}. Prefix index of the last run: {new['index_bytes'] / 1e6:.1f} MB for {new['listed']:,} prefixes; "
      f"second backup: {new['confirmed']} chunks confirmed by a stat, {new['unconfirmed']} prefix hits not stored.")
EOF
echo
echo "CPU: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); disk: $(df -h "$dir" | tail -1 | awk '{print $1}')"
