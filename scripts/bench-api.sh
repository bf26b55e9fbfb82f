#!/usr/bin/env bash
# API benchmark: a release control plane loaded with 10 000 policies and 200 000 catalog entries,
# measured with wrk over loopback HTTPS (keep-alive connections, so TLS handshakes are not what
# is measured). Prints wrk's latency distribution for each scenario.
#   scripts/bench-api.sh        # POLICIES=10000 BACKUPS=200000 DURATION=20s CONNECTIONS=16
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --locked -q -p bulwark-control-plane -p bulwark-tests --bin bulwark-control-plane --bin bulwark-api-seed
bin="$PWD/target/release"
POLICIES=${POLICIES:-10000}
BACKUPS=${BACKUPS:-200000}
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-16}
dir=${BENCH_DIR:-/tmp/bulwark-api-bench}
rm -rf "$dir" && mkdir -p "$dir"
echo "seeding $POLICIES policies and $BACKUPS catalog entries into $dir" >&2
seed_start=$(date +%s.%N)
seed=$("$bin/bulwark-api-seed" "$dir/data" "$POLICIES" "$BACKUPS")
echo "seeded in $(echo "$(date +%s.%N) - $seed_start" | bc) s" >&2
token=$(echo "$seed" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
policy=$(echo "$seed" | python3 -c 'import json,sys; print(json.load(sys.stdin)["policy"])')
database=$(echo "$seed" | python3 -c 'import json,sys; print(json.load(sys.stdin)["database"])')
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn "$bin/bulwark-control-plane" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sk "https://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
base="https://127.0.0.1:$port"
echo "server rss before load: $(ps -o rss= -p $server) KiB" >&2

run() { # label, then wrk arguments
  echo "### $1"
  shift
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -H "Authorization: Bearer $token" "$@" | grep -E "Latency|50%|90%|99%|Requests/sec|requests in|Non-2xx"
}
run "GET /api/v1/backups?database=$database&page_size=50" "$base/api/v1/backups?database=$database&page_size=50"
run "GET /api/v1/policies/{id}" "$base/api/v1/policies/$policy"

# Policy creation: each request registers a policy with a schedule of its own on one database
# (every <n>m, a new n per round over the databases), so none conflicts; every one is a committed, audited write.
cat > "$dir/create.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  local db = string.format("db-%05d", counter % 10000)
  local minutes = 5 + math.floor(counter / 10000)
  local body = string.format('{"db_identifier":"%s","db_type":"postgresql","schedule":{"frequency":"every %dm","preferred_window":"00:00-24:00","priority":"normal"},"retention":{"period_days":3650,"min_snapshots":1}}', db, minutes)
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = wrk.headers["Authorization"]}
  return wrk.format("POST", "/api/v1/policies", headers, body)
end
LUA
run "POST /api/v1/policies (create)" -s "$dir/create.lua" "$base/api/v1/policies"
echo "server rss after load: $(ps -o rss= -p $server) KiB" >&2
