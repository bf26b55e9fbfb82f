#!/usr/bin/env bash
# Quickstart on embedded defaults: a sample SQLite database, declared in an agent configuration,
# backed up through the SQLite driver (online backup API) into a local, encrypted repository,
# changed, backed up again (deduplicated), verified, and restored — with the restore checked
# against the source. Then the same database managed from the control plane: the control plane
# started on loopback, a workspace, the agent enrolled over mutual TLS and run as the daemon, a
# policy and a manual backup requested through the API, the backup in the catalog. Everything
# lives under ./quickstart/ (removed first).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "==> building bulwark-agent and bulwark-control-plane (release)"
cargo build --release --locked -p bulwark-agent -p bulwark-control-plane -q
agent="$PWD/target/release/bulwark-agent"
cp_bin="$PWD/target/release/bulwark-control-plane"

work="$PWD/quickstart"
rm -rf "$work" && mkdir -p "$work"
export BULWARK_REPO="$work/repo"
export BULWARK_PASSWORD_FILE="$work/passphrase"
head -c 24 /dev/urandom | base64 > "$BULWARK_PASSWORD_FILE"
chmod 600 "$BULWARK_PASSWORD_FILE"

echo "==> creating a sample SQLite database with 200 000 orders"
db="$work/shop/shop.db"
mkdir -p "$work/shop"
sqlite3 "$db" <<'SQL'
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL, created TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)
INSERT INTO orders SELECT i, 'customer-' || (i % 997), (i * 37 % 10000) / 100.0,
  datetime('2026-01-01', '+' || (i % 300) || ' days') FROM n;
SQL

echo "==> the agent configuration: repository and database"
export BULWARK_CONFIG="$work/agent.toml"
cat > "$BULWARK_CONFIG" <<TOML
[repository]
location = "$BULWARK_REPO"
password_file = "$BULWARK_PASSWORD_FILE"

[[databases]]
id = "shop"
type = "sqlite"
path = "$db"
TOML
unset BULWARK_REPO BULWARK_PASSWORD_FILE   # from here on the configuration says it all

echo "==> bulwark-agent repo init"
"$agent" repo init

echo "==> bulwark-agent check"
"$agent" check

echo "==> backup 1: a consistent copy through SQLite's online backup API"
"$agent" backup --database shop --tag env=quickstart

echo "==> 1 000 new orders, then backup 2 (only changed chunks are stored)"
sqlite3 "$db" "INSERT INTO orders SELECT id + 200000, customer, amount, created FROM orders LIMIT 1000;"
"$agent" backup --database shop

echo "==> backup 3: the whole directory as a tree (modes, mtimes, file index)"
sqlite3 "$db" ".backup '$work/shop/shop-copy.db'"
"$agent" backup --database shop-files --path "$work/shop"

echo "==> bulwark-agent snapshots"
"$agent" snapshots

echo "==> bulwark-agent verify --all"
"$agent" verify --all

echo "==> restore the latest backup beside the original (integrity-checked) and compare"
"$agent" restore latest --database shop --to "$work/restored.db"
src=$(sqlite3 "$db" "SELECT count(*), sum(amount) FROM orders")
dst=$(sqlite3 "$work/restored.db" "SELECT count(*), sum(amount) FROM orders")
echo "source:   $src"
echo "restored: $dst"
[ "$src" = "$dst" ] || { echo "MISMATCH"; exit 1; }

echo "==> restore one file of the tree snapshot"
"$agent" restore latest --database shop-files --target "$work/restored-files" --include shop-copy.db
cmp "$work/shop/shop-copy.db" "$work/restored-files/shop-copy.db"

echo "==> prune (dry run): keep the newest snapshot per database"
"$agent" prune --keep-last 1 --dry-run

echo "==> the control plane: bootstrap, then serve on 127.0.0.1 (self-signed TLS, built-in agent CA)"
cp_dir="$work/control-plane"
admin=$("$cp_bin" admin bootstrap --data-dir "$cp_dir" --json | jq -r .token)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'scheduler_tick_secs = 2\n' > "$cp_dir/control-plane.toml"
"$cp_bin" serve --config "$cp_dir/control-plane.toml" --data-dir "$cp_dir" --listen "127.0.0.1:$port" \
  > "$work/control-plane.log" 2>&1 &
cp_pid=$!
agent_pid=""
trap 'kill $agent_pid $cp_pid 2>/dev/null || true' EXIT
base="https://127.0.0.1:$port"
for _ in $(seq 100); do curl -sfk "$base/readyz" >/dev/null && break; sleep 0.1; done
api() { curl -sSk --fail-with-body -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' "$@"; }
fingerprint="sha256:$(openssl x509 -in "$cp_dir/tls/server.crt" -outform der | sha256sum | cut -d' ' -f1)"

echo "==> a workspace, and a one-time enrolment token for this host"
api "$base/api/v1/workspaces" -d '{"id":"quickstart","name":"Quickstart","plan":"dedicated","quota_bytes":10737418240}' >/dev/null
token=$(api "$base/api/v1/agents/enrollment-tokens" -d '{"workspace_id":"quickstart","note":"this host"}' | jq -r .secret)

echo "==> bulwark-agent enroll (key made here, CSR sent, database 'shop' registered), then run"
# The token goes through stdin, never the command line (where every user of the host can read it).
printf '%s\n' "$token" | "$agent" enroll --server "$base" --token-file - --ca-fingerprint "$fingerprint" --state-dir "$work/agent-state"
"$agent" run --state-dir "$work/agent-state" > "$work/agent.log" 2>&1 &
agent_pid=$!

echo "==> a daily policy (its runs spread inside 01:00-05:00), and what will run in the next 24 h"
api "$base/api/v1/policies" -d '{"db_identifier":"shop","db_type":"sqlite",
  "schedule":{"frequency":"daily","preferred_window":"01:00-05:00","priority":"normal"},
  "retention":{"period_days":30,"min_snapshots":7}}' >/dev/null
sleep 3
api "$base/api/v1/schedule/upcoming?hours=24" | jq -r '.items[] | "  \(.at)  \(.database_id)  \(.reason)"'

echo "==> a manual backup through the API: one job, run by the agent over mutual TLS"
job=$(api "$base/api/v1/backups" -d '{"database_id":"shop","notes":"quickstart","tags":{"ticket":"qs-1"}}' | jq -r '.jobs[0].id')
status=queued
for _ in $(seq 300); do
  status=$(api "$base/api/v1/jobs/$job" | jq -r .status)
  [ "$status" = succeeded ] || [ "$status" = failed ] && break
  sleep 0.2
done
api "$base/api/v1/jobs/$job" | jq '{id, status, reason, snapshot, logical_bytes, stored_bytes}'
[ "$status" = succeeded ] || { echo "the job did not succeed; see $work/agent.log"; exit 1; }
echo "==> the catalog"
api "$base/api/v1/backups?database=shop" | jq -r '.items[] | "  \(.started_at)  \(.kind)  \(.status)  \(.snapshot)  \(.stored_bytes) bytes stored"'
"$agent" snapshots --database shop | tail -n 2

echo "==> stopping the agent (SIGTERM) and the control plane"
kill -TERM "$agent_pid"; wait "$agent_pid" || true
kill -TERM "$cp_pid"; wait "$cp_pid" || true
trap - EXIT

echo
echo "Quickstart done. Repository: $work/repo, configuration: $BULWARK_CONFIG,"
echo "control plane data: $cp_dir (admin token: $admin)."
echo "Try: $agent --config $BULWARK_CONFIG snapshots    (and --help)"
