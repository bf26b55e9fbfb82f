#!/usr/bin/env bash
# PostgreSQL benchmark: bulwark-agent against the standard tools on the same cluster, in one run.
#
#   logical backup    bulwark backup (method logical)      vs  pg_dump -Fc > /dev/null
#   physical backup   bulwark backup --method physical     vs  pgBackRest full backup (zstd, 2 processes)
#   physical restore  bulwark restore --data-dir           vs  pgbackrest restore --type=immediate
#   logical restore   bulwark restore --into-database -j2  vs  pg_restore -j 2 (of a pg_dump -Fc -Z0 file)
#   WAL archiving     bulwark wal-push, 64 segments        vs  pgbackrest archive-push, same files
#   drill RTO         bulwark drill --physical --to-time T vs  pgbackrest restore --type=time
#                     (restore, start, PITR, checks)           --target=T + pg_ctl start + query
#
# The cluster is a fresh PostgreSQL 15 one filled with `pgbench -i -s $SCALE` (SCALE=50 is about
# 750 MB), archive_mode on with bulwark-agent wal-push as archive_command (as in production).
# pgBackRest runs with archive-check=n so that it does not need its own archive_command; its
# backups therefore have no WAL in its repository and its restored copy is not started (only
# the restore itself is timed). Bulwark's restores are started / queried to check them (VERIFY=0
# skips that; it is never timed). The drill row is different: for it both tools take a fresh
# base backup while archive_command pushes every segment into both repositories, so both
# recover the same WAL to the same time T (see the section below).
#
# Times are wall-clock seconds from GNU time, also peak RSS of each bulwark command. Output: a
# Markdown table on stdout (progress on stderr). Everything lives in one temporary directory,
# removed at the end (KEEP=1 keeps it); servers started here are stopped on any exit.
#
#   scripts/bench-pg.sh                 # SCALE=50
#   SCALE=2 scripts/bench-pg.sh         # smoke run
#   BULWARK_AGENT=target/debug/bulwark-agent SCALE=2 scripts/bench-pg.sh   # no release build
#
# As root (CI), PostgreSQL, pgBackRest and the agent run as the `postgres` OS user (runuser).
set -euo pipefail
cd "$(dirname "$0")/.."
BULWARK_SETUP_BENCH=1 scripts/setup.sh
if [ -z "${BULWARK_AGENT:-}" ]; then
  cargo build --release --locked -q -p bulwark-agent --bin bulwark-agent
  BULWARK_AGENT=target/release/bulwark-agent
fi
agent_src=$(realpath "$BULWARK_AGENT")

SCALE=${SCALE:-50}
VERIFY=${VERIFY:-1}
SEGMENTS=64
BIN=/usr/lib/postgresql/15/bin
dir=$(mktemp -d "${BENCH_DIR:-/tmp}/bulwark-bench-pg.XXXXXX")
chmod 0755 "$dir"
if [ "$(id -u)" -eq 0 ]; then
  AS_DB=(runuser -u postgres --)
  chown postgres: "$dir"
else
  AS_DB=()
fi
# Run a command as the database OS user (postgres when root, else ourselves).
db() { "${AS_DB[@]}" "$@"; }
log() { echo "bench-pg: $*" >&2; }

# Servers started here, stopped (immediately) on exit, whatever the reason.
servers=()
cleanup() {
  local d
  for d in "${servers[@]}"; do
    [ -f "$d/postmaster.pid" ] && db "$BIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1 || true
  done
  if [ "${KEEP:-0}" = 1 ]; then log "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$dir" # the postgres user may not be allowed into the checkout
# The agent binary where the postgres user can surely execute it (archive_command, restore_command).
install -m 0755 "$agent_src" "$dir/bulwark-agent"
agent="$dir/bulwark-agent"
export BULWARK_LOG=warn
unset BULWARK_REPO BULWARK_PASSWORD BULWARK_PASSWORD_FILE PGPASSWORD PGHOST PGPORT PGUSER PGDATABASE

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
secret() { # secret FILE TEXT: a 0600 file owned by the db user
  (umask 077; printf '%s\n' "$2" > "$1")
  [ ${#AS_DB[@]} -eq 0 ] || chown postgres: "$1"
}
mkdb_dir() { mkdir -p "$@"; [ ${#AS_DB[@]} -eq 0 ] || chown postgres: "$@"; }

# ---------------------------------------------------------------------------------------------
# The cluster. Host (TCP) connections need the password (the agent uses them, as in production);
# the Unix socket in $dir trusts local users (pgBackRest, pg_dump and psql here use it).
data=$dir/data
port=$(free_port)
cfg=$dir/agent.toml
secret "$dir/pg-pass" bench-pg-password
secret "$dir/repo-pass" bench-repo-passphrase
pgconn="{ host = \"127.0.0.1\", port = $port, user = \"postgres\", dbname = \"benchdb\", password_file = \"$dir/pg-pass\" }"
cat > "$cfg" <<EOF
[repository]
location = "$dir/bulwark-repo"
password_file = "$dir/repo-pass"

[[databases]]
id = "bench"
type = "postgresql"
method = "physical"
data_dir = "$data"
bin_dir = "$BIN"
connection = $pgconn

[[databases]]
id = "bench-logical"
type = "postgresql"
method = "logical"
bin_dir = "$BIN"
connection = $pgconn
EOF
chmod 0644 "$cfg"
# The repository exists before the server starts, so archiving works from the first segment.
# As README recommends, the agent then opens it with a generated machine key (a slot with light
# key derivation) instead of the operators' passphrase: wal-push runs once per segment.
db "$agent" --config "$cfg" repo init >/dev/null
db "$agent" --config "$cfg" repo key add --generate "$dir/repo.key" --label agent >/dev/null
sed -i "s|^password_file = \"$dir/repo-pass\"|password_file = \"$dir/repo.key\"|" "$cfg"
grep -q "$dir/repo.key" "$cfg" || { log "could not switch the config to the machine key"; exit 1; }

log "initdb + start on port $port (scale $SCALE)"
db "$BIN/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
  --pwfile "$dir/pg-pass" -E UTF8 --no-locale >/dev/null
servers+=("$data")
cat >> "$data/postgresql.conf" <<EOF
# bench-pg.sh
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
shared_buffers = 256MB
max_wal_size = 4GB
wal_level = replica
max_wal_senders = 4
archive_mode = on
archive_command = 'BULWARK_LOG=warn $agent --config $cfg wal-push --database bench %p'
EOF
db "$BIN/pg_ctl" -D "$data" -l "$dir/postgresql.log" -w -t 120 start >/dev/null

# psql/pg tools over the socket as the superuser.
sock=(-h "$dir" -p "$port" -U postgres)
sql() { db "$BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 "${sock[@]}" -d "${2:-postgres}" -c "$1"; }

# Waits until the archiver has pushed every finished segment (no .ready files left), so that
# background archiving does not run during the next measurement. Gives up when archiving keeps
# failing for 60 s.
wait_archived() {
  local failing=0
  while [ "$(sql "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")" != 0 ]; do
    if [ "$(sql "SELECT coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) FROM pg_stat_archiver")" = t ]; then
      failing=$((failing + 1))
      if [ $failing -ge 60 ]; then
        log "archive_command keeps failing:"; sql "SELECT * FROM pg_stat_archiver" >&2
        tail -20 "$dir/postgresql.log" >&2; exit 1
      fi
    else
      failing=0
    fi
    sleep 1
  done
}

log "pgbench -i -s $SCALE"
sql "CREATE DATABASE benchdb"
db "$BIN/pgbench" "${sock[@]}" -i -q -s "$SCALE" benchdb >/dev/null 2>"$dir/pgbench.err" \
  || { cat "$dir/pgbench.err" >&2; exit 1; }
sql "CHECKPOINT"
wait_archived
db_bytes=$(sql "SELECT pg_database_size('benchdb')")

# run LABEL [db] CMD...: runs CMD (as the db user after `db`) under GNU time; sets T_LABEL
# (seconds) and M_LABEL (peak RSS, KiB). stdout goes to $dir/out.LABEL (or to $STDOUT if set),
# stderr to $dir/err.LABEL.
run() {
  local label=$1; shift
  if [ "$1" = db ]; then shift; set -- "${AS_DB[@]}" "$@"; fi
  sync
  if ! /usr/bin/time -f "%e %M" -o "$dir/time.$label" "$@" >"${STDOUT:-$dir/out.$label}" 2>"$dir/err.$label"; then
    log "FAILED: $label: $*"; cat "$dir/err.$label" >&2; exit 1
  fi
  local secs rss
  read -r secs rss < "$dir/time.$label"
  printf -v "T_$label" %s "$secs"
  printf -v "M_$label" %s "$rss"
}

# ---------------------------------------------------------------------------------------------
log "logical backups"
STDOUT=/dev/null run pg_dump db "$BIN/pg_dump" "${sock[@]}" -Fc benchdb
# The uncompressed custom-format dump pg_restore reads below (timed for information only).
run pg_dump_z0 db "$BIN/pg_dump" "${sock[@]}" -Fc -Z0 -f "$dir/bench.dump" benchdb
run b_logical db "$agent" --config "$cfg" backup --database bench-logical --json
wait_archived

log "physical backups"
sql "CHECKPOINT"
run b_physical db "$agent" --config "$cfg" backup --database bench --method physical --json
wait_archived

mkdb_dir "$dir/pgbackrest-repo" "$dir/pgbackrest-log" "$dir/pgbackrest-lock" "$dir/pgbackrest-spool"
cat > "$dir/pgbackrest.conf" <<EOF
[global]
repo1-path=$dir/pgbackrest-repo
repo1-retention-full=2
process-max=2
compress-type=zst
start-fast=y
archive-check=n
log-path=$dir/pgbackrest-log
lock-path=$dir/pgbackrest-lock
spool-path=$dir/pgbackrest-spool
log-level-console=warn
log-level-file=off

[bench]
pg1-path=$data
pg1-port=$port
pg1-socket-path=$dir
pg1-user=postgres
EOF
chmod 0644 "$dir/pgbackrest.conf"
pgbr=(pgbackrest --config="$dir/pgbackrest.conf" --stanza=bench)
db "${pgbr[@]}" stanza-create >/dev/null
sql "CHECKPOINT"
run pgbr_backup db "${pgbr[@]}" backup --type=full
wait_archived

# ---------------------------------------------------------------------------------------------
# Restores write the whole cluster to a virtual disk whose speed swings between minutes, so
# each runs 3 times, the tools taking turns, and the median counts (the last copy is kept).
log "physical restores (3 rounds)"
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
servers+=("$dir/restore-bulwark")
for round in 1 2 3; do
  rm -rf "$dir/restore-bulwark" "$dir/restore-pgbr"
  run b_restore_phys_$round db "$agent" --config "$cfg" restore latest --database bench --data-dir "$dir/restore-bulwark" --json
  mkdb_dir "$dir/restore-pgbr" && chmod 0700 "$dir/restore-pgbr"
  run pgbr_restore_$round db "${pgbr[@]}" restore --pg1-path="$dir/restore-pgbr" --type=immediate --target-action=promote
done
T_b_restore_phys=$(median "$T_b_restore_phys_1" "$T_b_restore_phys_2" "$T_b_restore_phys_3")
M_b_restore_phys=$(median "$M_b_restore_phys_1" "$M_b_restore_phys_2" "$M_b_restore_phys_3")
T_pgbr_restore=$(median "$T_pgbr_restore_1" "$T_pgbr_restore_2" "$T_pgbr_restore_3")
log "physical restore rounds: bulwark $T_b_restore_phys_1 $T_b_restore_phys_2 $T_b_restore_phys_3 s, pgbackrest $T_pgbr_restore_1 $T_pgbr_restore_2 $T_pgbr_restore_3 s"

log "logical restores"
run b_restore_logical db "$agent" --config "$cfg" restore latest --database bench-logical --into-database restored --jobs 2 --json
sql "CREATE DATABASE restored2"
run pg_restore db "$BIN/pg_restore" "${sock[@]}" -j 2 -d restored2 "$dir/bench.dump"

# ---------------------------------------------------------------------------------------------
# WAL: 64 real segments. For the time it takes to write them, archive_command copies finished
# segments into walseg/ instead of pushing them; then each tool archives those same files, one
# command per segment as PostgreSQL would run it. Bulwark's push is real (it completes the
# database's WAL archive); pgBackRest's goes into its own repository.
log "WAL: generating $SEGMENTS segments"
wait_archived
mkdb_dir "$dir/walseg"
sql "ALTER SYSTEM SET archive_command = 'cp %p $dir/walseg/%f'" >/dev/null
sql "SELECT pg_reload_conf()" >/dev/null
sleep 2
sql "CREATE TABLE walgen (id int, pad text)" benchdb
for _ in $(seq "$SEGMENTS"); do
  # About 14 MB of WAL, then a switch: at least one segment each.
  sql "INSERT INTO walgen SELECT g, repeat(md5(random()::text), 4) FROM generate_series(1, 80000) g" benchdb
  sql "SELECT pg_switch_wal()" >/dev/null
done
wait_archived
sql "ALTER SYSTEM RESET archive_command" >/dev/null
sql "SELECT pg_reload_conf()" >/dev/null
sql "DROP TABLE walgen" benchdb
mapfile -t captured < <(find "$dir/walseg" -maxdepth 1 -type f -printf '%p\n' | sort)
mapfile -t segs < <(printf '%s\n' "${captured[@]}" | grep -E '/[0-9A-F]{24}$' | head -n "$SEGMENTS")
[ ${#segs[@]} -eq "$SEGMENTS" ] || { log "only ${#segs[@]} segments were archived"; exit 1; }
wal_bytes=$(cat "${segs[@]}" | wc -c)
log "WAL: pushing $SEGMENTS segments with each tool"
# One runuser around the whole loop, so its start-up is not counted 64 times. GNU time's peak
# RSS is the largest of the per-segment processes.
run b_wal db bash -c 'a=$1 c=$2; shift 2; for f; do "$a" --config "$c" wal-push --database bench "$f"; done' _ "$agent" "$cfg" "${segs[@]}"
# Whatever else was captured goes into bulwark's archive too (untimed): no hole for recovery.
for f in "${captured[@]}"; do
  case " ${segs[*]} " in *" $f "*) ;; *) db "$agent" --config "$cfg" wal-push --database bench "$f" ;; esac
done
run pgbr_wal db bash -c 'c=$1; shift; for f; do pgbackrest --config="$c" --stanza=bench archive-push "$f"; done' _ "$dir/pgbackrest.conf" "${segs[@]}"

# ---------------------------------------------------------------------------------------------
# Restore drill RTO, physical + point-in-time (issue 13). From here archive_command pushes each
# segment into both repositories, and each tool takes a fresh base backup (bulwark's first, so
# it is the one with slightly more WAL to replay). Then pgbench transactions (WAL both tools
# have), a quiet second noted as T, more transactions after T, all archived. Each tool then
# recovers its base to T in a new cluster and answers a query whose result proves where recovery
# stopped (pgbench_history's rows as of T):
#   bulwark:    bulwark-agent drill --physical --to-time T --no-integrity --no-row-counts
#               --check history=...  (scratch server on a socket in the state dir, no TCP;
#               fsync=off; then stopped and removed by the command itself)
#   pgBackRest: pgbackrest restore --type=time --target=T --target-action=promote, the same
#               server settings appended (socket in $dir on a free port, no TCP, archive_mode,
#               fsync and synchronous_commit off), pg_ctl start, psql polled every 0.1 s until
#               pg_is_in_recovery() is false, then the same query.
# Timed: bulwark's whole command (GNU time) and its own RTO clock (ready_secs: from its start to
# the last check answered); pgBackRest's restore + start + promotion + query (to the answer),
# and its stop + removal separately, to compare with bulwark's whole command. 3 rounds, the
# tools taking turns, medians.
log "drill: fresh base backups with every segment archived by both tools"
wait_archived
sql "ALTER SYSTEM SET archive_command = 'BULWARK_LOG=warn $agent --config $cfg wal-push --database bench %p && pgbackrest --config=$dir/pgbackrest.conf --stanza=bench archive-push %p'" >/dev/null
sql "SELECT pg_reload_conf()" >/dev/null
sleep 1
sql "SELECT pg_switch_wal()" >/dev/null
wait_archived
sql "CHECKPOINT"
db "$agent" --config "$cfg" backup --database bench --method physical --json >/dev/null
wait_archived
sql "CHECKPOINT"
db "${pgbr[@]}" backup --type=full >/dev/null
wait_archived
# 2 clients x DRILL_TX transactions before T, a tenth of that after it.
DRILL_TX=${DRILL_TX:-5000}
log "drill: pgbench -t $DRILL_TX -c 2, T, pgbench -t $((DRILL_TX / 10)) -c 2"
wal_before=$(sql "SELECT pg_current_wal_lsn()")
db "$BIN/pgbench" "${sock[@]}" -n -c 2 -j 2 -t "$DRILL_TX" benchdb >/dev/null 2>"$dir/pgbench.err" \
  || { cat "$dir/pgbench.err" >&2; exit 1; }
drill_wal_bytes=$(sql "SELECT pg_current_wal_lsn() - '$wal_before'::pg_lsn")
sleep 1.5
drill_t=$(sql "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
drill_t_pgbr=${drill_t/T/ }; drill_t_pgbr=${drill_t_pgbr%Z}+00 # pgBackRest's time format
history_at_t=$(sql "SELECT count(*) FROM pgbench_history" benchdb)
sleep 1.5
db "$BIN/pgbench" "${sock[@]}" -n -c 2 -j 2 -t $((DRILL_TX / 10)) benchdb >/dev/null 2>"$dir/pgbench.err" \
  || { cat "$dir/pgbench.err" >&2; exit 1; }
sql "SELECT pg_switch_wal()" >/dev/null
wait_archived
sql "ALTER SYSTEM RESET archive_command" >/dev/null
sql "SELECT pg_reload_conf()" >/dev/null
log "drill: T = $drill_t, pgbench_history had $history_at_t rows; $(awk -v b="$drill_wal_bytes" 'BEGIN { printf "%.0f", b / 1048576 }') MiB of WAL from the bases to T"
history_sql="SELECT count(*) FROM pgbench_history"
mkdb_dir "$dir/state"
chmod 0711 "$dir/state"
drill_pgbr() { # the pgBackRest side, up to the answer; prints the answer
  local d=$1 p=$2 conf=$3 t=$4 bin=$5 q=$6 n=0
  pgbackrest --config="$conf" --stanza=bench restore --pg1-path="$d" --type=time --target="$t" --target-action=promote || return 1
  printf "%s\n" "# bench-pg.sh drill" "port = $p" "listen_addresses = ''" \
    "unix_socket_directories = '$(dirname "$d")'" "archive_mode = off" "fsync = off" \
    "synchronous_commit = off" >> "$d/postgresql.auto.conf"
  "$bin/pg_ctl" -D "$d" -l "$d.log" -w -t 600 start >/dev/null || { cat "$d.log" >&2; return 1; }
  until [ "$("$bin/psql" -X -A -t -h "$(dirname "$d")" -p "$p" -U postgres -d benchdb -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do
    n=$((n + 1)); [ $n -lt 6000 ] || { echo "not promoted after 600 s" >&2; cat "$d.log" >&2; return 1; }
    sleep 0.1
  done
  "$bin/psql" -X -A -t -h "$(dirname "$d")" -p "$p" -U postgres -d benchdb -c "$q"
}
servers+=("$dir/drill-pgbr")
for round in 1 2 3; do
  log "drill round $round"
  STDOUT="$dir/drill-bulwark.$round.json" run b_drill_$round db "$agent" --config "$cfg" drill --database bench \
    --physical --to-time "$drill_t" --no-integrity --no-row-counts \
    --check "history=$history_sql=$history_at_t" --state-dir "$dir/state" --json
  r=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["passed"] and d["scratch_removed"], d; print(round(d["ready_secs"], 2))' "$dir/drill-bulwark.$round.json") \
    || { log "bulwark drill did not pass:"; cat "$dir/drill-bulwark.$round.json" >&2; exit 1; }
  printf -v "R_b_drill_$round" %s "$r"
  rm -rf "$dir/drill-pgbr" "$dir/drill-pgbr.log"
  mkdb_dir "$dir/drill-pgbr" && chmod 0700 "$dir/drill-pgbr"
  dport=$(free_port)
  STDOUT="$dir/drill-pgbr.answer" run pgbr_drill_$round db bash -c "$(declare -f drill_pgbr); drill_pgbr \"\$@\"" _ \
    "$dir/drill-pgbr" "$dport" "$dir/pgbackrest.conf" "$drill_t_pgbr" "$BIN" "$history_sql"
  got=$(cat "$dir/drill-pgbr.answer")
  [ "$got" = "$history_at_t" ] || { log "pgBackRest's copy answered $got rows, expected $history_at_t"; exit 1; }
  run pgbr_drill_down_$round db bash -c '"$1/pg_ctl" -D "$2" -m immediate -w stop >/dev/null && rm -rf "$2"' _ "$BIN" "$dir/drill-pgbr"
done
T_b_drill=$(median "$T_b_drill_1" "$T_b_drill_2" "$T_b_drill_3")
M_b_drill=$(median "$M_b_drill_1" "$M_b_drill_2" "$M_b_drill_3")
R_b_drill=$(median "$R_b_drill_1" "$R_b_drill_2" "$R_b_drill_3")
T_pgbr_drill=$(median "$T_pgbr_drill_1" "$T_pgbr_drill_2" "$T_pgbr_drill_3")
for round in 1 2 3; do
  v=T_pgbr_drill_$round w=T_pgbr_drill_down_$round
  printf -v "T_pgbr_drill_all_$round" %s "$(awk -v a="${!v}" -v b="${!w}" 'BEGIN { printf "%.2f", a + b }')"
done
T_pgbr_drill_all=$(median "$T_pgbr_drill_all_1" "$T_pgbr_drill_all_2" "$T_pgbr_drill_all_3")
log "drill rounds: bulwark ready_secs $R_b_drill_1 $R_b_drill_2 $R_b_drill_3 s (whole command $T_b_drill_1 $T_b_drill_2 $T_b_drill_3 s), pgbackrest to the answer $T_pgbr_drill_1 $T_pgbr_drill_2 $T_pgbr_drill_3 s (with stop + removal $T_pgbr_drill_all_1 $T_pgbr_drill_all_2 $T_pgbr_drill_all_3 s)"
recovered_to=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("recovered_to"), "|", (d.get("reached") or {}).get("stop_reason"))' "$dir/drill-bulwark.3.json")

# ---------------------------------------------------------------------------------------------
# Checks (not timed): the restored copies hold the data.
expected=$((SCALE * 100000))
check_phys=skipped check_logical=skipped
if [ "$VERIFY" = 1 ]; then
  log "checking the restores"
  got=$(sql "SELECT (SELECT count(*) FROM pgbench_accounts)" restored)
  got2=$(sql "SELECT (SELECT count(*) FROM pgbench_accounts)" restored2)
  check_logical="pgbench_accounts rows: bulwark $got, pg_restore $got2 (expected $expected)"
  [ "$got" = "$expected" ] && [ "$got2" = "$expected" ] || { log "logical restore check failed: $check_logical"; exit 1; }
  # Bulwark's physical copy recovers through its wal-fetch restore_command, on its own port,
  # without archiving (it must not push a new timeline into the benchmark's archive).
  rport=$(free_port)
  db "$BIN/pg_ctl" -D "$dir/restore-bulwark" -l "$dir/restore-bulwark.log" -w -t 600 \
    -o "-p $rport -c archive_mode=off -c unix_socket_directories=$dir" start >/dev/null
  got=$(db "$BIN/psql" -X -q -A -t -h "$dir" -p "$rport" -U postgres -d benchdb -c "SELECT count(*) FROM pgbench_accounts")
  db "$BIN/pg_ctl" -D "$dir/restore-bulwark" -m fast -w stop >/dev/null
  check_phys="pgbench_accounts rows after recovery: $got (expected $expected)"
  [ "$got" = "$expected" ] || { log "physical restore check failed: $check_phys"; exit 1; }
fi

# ---------------------------------------------------------------------------------------------
# (GNU time has 10 ms resolution: a zero would divide by zero at tiny scales.)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.1f", n / s; else print "n/a" }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
mb() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
b_rate=$(rate "$SEGMENTS" "$T_b_wal") p_rate=$(rate "$SEGMENTS" "$T_pgbr_wal")
b_rate_n=${b_rate/n\/a/0} p_rate_n=${p_rate/n\/a/0}

echo "PostgreSQL $(sql 'SHOW server_version'), pgbench scale $SCALE (database $(mb "$db_bytes") MiB), $(pgbackrest version), $(nproc) cores, $(date -u +%Y-%m-%d)"
echo
echo "| measurement | bulwark-agent | reference | reference tool | bulwark ÷ reference | bulwark peak RSS (MiB) |"
echo "|---|---|---|---|---|---|"
echo "| logical backup (s) | $T_b_logical | $T_pg_dump | pg_dump -Fc > /dev/null | $(ratio "$T_b_logical" "$T_pg_dump") | $(mib "$M_b_logical") |"
echo "| physical backup (s) | $T_b_physical | $T_pgbr_backup | pgbackrest backup --type=full | $(ratio "$T_b_physical" "$T_pgbr_backup") | $(mib "$M_b_physical") |"
echo "| physical restore (s) | $T_b_restore_phys | $T_pgbr_restore | pgbackrest restore --type=immediate | $(ratio "$T_b_restore_phys" "$T_pgbr_restore") | $(mib "$M_b_restore_phys") |"
echo "| logical restore, 2 jobs (s) | $T_b_restore_logical | $T_pg_restore | pg_restore -j 2 (-Z0 dump) | $(ratio "$T_b_restore_logical" "$T_pg_restore") | $(mib "$M_b_restore_logical") |"
echo "| WAL push, $SEGMENTS segments (segments/s) | $b_rate | $p_rate | pgbackrest archive-push | $(ratio "$b_rate_n" "$p_rate_n") | $(mib "$M_b_wal") |"
echo "| drill RTO (physical + PITR), to the answer (s, median of 3) | $R_b_drill | $T_pgbr_drill | pgbackrest restore --type=time + pg_ctl start + psql | $(ratio "$R_b_drill" "$T_pgbr_drill") | $(mib "$M_b_drill") |"
echo "| drill, whole command incl. stop + removal (s, median of 3) | $T_b_drill | $T_pgbr_drill_all | the same + pg_ctl stop -m immediate + rm -rf | $(ratio "$T_b_drill" "$T_pgbr_drill_all") | $(mib "$M_b_drill") |"
echo
echo "For seconds, a ratio below 1 means bulwark is faster; for segments/s, above 1 does."
echo "pg_dump -Fc -Z0 -f (the file pg_restore read): $T_pg_dump_z0 s. WAL pushed: $(mb "$wal_bytes") MiB."
echo "Checks: logical: $check_logical; physical: $check_phys."
echo "Drill: T = $drill_t, $(mb "$drill_wal_bytes") MiB of WAL from the bases to T; both copies answered $history_at_t pgbench_history rows; bulwark recovered to $recovered_to."
echo "Drill rounds: bulwark ready_secs $R_b_drill_1 / $R_b_drill_2 / $R_b_drill_3 s, whole command $T_b_drill_1 / $T_b_drill_2 / $T_b_drill_3 s; pgBackRest to the answer $T_pgbr_drill_1 / $T_pgbr_drill_2 / $T_pgbr_drill_3 s, with stop + removal $T_pgbr_drill_all_1 / $T_pgbr_drill_all_2 / $T_pgbr_drill_all_3 s."
