#!/usr/bin/env bash
# Quickstart on embedded defaults: a sample SQLite database, declared in an agent configuration,
# backed up through the SQLite driver (online backup API) into a local, encrypted repository,
# changed, backed up again (deduplicated), verified, and restored — with the restore checked
# against the source. Everything lives under ./quickstart/ (removed first).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "==> building bulwark-agent (release)"
cargo build --release --locked -p bulwark-agent -q
agent="$PWD/target/release/bulwark-agent"

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

echo
echo "Quickstart done. Repository: $work/repo, configuration: $BULWARK_CONFIG."
echo "Try: $agent --config $BULWARK_CONFIG snapshots    (and --help)"
