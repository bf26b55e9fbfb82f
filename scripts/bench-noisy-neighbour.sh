#!/usr/bin/env bash
# Noisy neighbour (issue 11): one tenant asks GET /api/v1/schedule/upcoming for 31 days of 60
# frequent policies in a loop from 4 clients; another tenant's light requests are measured with
# wrk, first on a quiet server, then under that load.
#   scripts/bench-noisy-neighbour.sh                    # this tree's release control plane
#   CP=/path/to/old/bulwark-control-plane OLD=1 scripts/bench-noisy-neighbour.sh
# The same 60 policies (every 5m, 6m, … 64m) either way. OLD=1: a control plane from before the
# limit of 10 policies per database and without the rate-limit keys (all 60 on one database, as
# the issue measured). Otherwise: 10 on each of 6 databases, rate limits off (so that what is
# measured is CPU isolation, not 429s).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
if [ -z "${CP:-}" ]; then
  cargo build --release --locked -q -p bulwark-control-plane
  CP="$PWD/target/release/bulwark-control-plane"
fi
DURATION=${DURATION:-20s}
dir=$(mktemp -d /tmp/bulwark-noisy.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
admin=$("$CP" admin bootstrap --data-dir "$dir/data" --json 2>/dev/null | jq -r .token)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
config=()
if [ "${OLD:-0}" != 1 ]; then
  printf 'rate_limit_token_per_sec = 0\nrate_limit_address_per_sec = 0\n' > "$dir/cp.toml"
  config=(--config "$dir/cp.toml")
fi
RUST_LOG=error "$CP" serve "${config[@]}" --data-dir "$dir/data" --listen "127.0.0.1:$port" &
base="https://127.0.0.1:$port"
for _ in $(seq 100); do curl -sk "$base/healthz" >/dev/null && break; sleep 0.1; done
api() { curl -sk -H "Authorization: Bearer $1" -H 'Content-Type: application/json' "${@:2}"; }
tenant() { # workspace → a workspace-admin token
  api "$admin" "$base/api/v1/workspaces" -d "{\"id\":\"$1\",\"name\":\"$1\",\"plan\":\"shared\",\"quota_bytes\":0}" >/dev/null
  local user
  user=$(api "$admin" "$base/api/v1/users" -d "{\"name\":\"$1-admin\",\"roles\":[{\"role\":\"workspace-admin\",\"workspace_id\":\"$1\"}]}" | jq -r .id)
  api "$admin" "$base/api/v1/users/$user/tokens" -d '{"name":"bench"}' | jq -r .secret
}
noisy=$(tenant noisy)
quiet=$(tenant quiet)
api "$quiet" "$base/api/v1/databases" -d '{"id":"q1","workspace_id":"quiet","type":"postgresql","connection":{"host":"pg"}}' >/dev/null
if [ "${OLD:-0}" = 1 ]; then dbs=1; per=60; else dbs=6; per=10; fi
made=0
for d in $(seq "$dbs"); do
  api "$noisy" "$base/api/v1/databases" -d "{\"id\":\"n$d\",\"workspace_id\":\"noisy\",\"type\":\"postgresql\",\"connection\":{\"host\":\"pg\"}}" >/dev/null
  for i in $(seq "$per"); do
    code=$(api "$noisy" -o /dev/null -w '%{http_code}' "$base/api/v1/policies" -d "{\"db_identifier\":\"n$d\",\"db_type\":\"postgresql\",
      \"schedule\":{\"frequency\":\"every $((4 + (d - 1) * per + i))m\",\"preferred_window\":\"00:00-24:00\",\"priority\":\"normal\"},
      \"retention\":{\"period_days\":30,\"min_snapshots\":1}}")
    [ "$code" = 201 ] && made=$((made + 1))
  done
done
echo "policies of the noisy tenant: $made"
measure() {
  wrk -t1 -c4 -d"$DURATION" --latency -H "Authorization: Bearer $quiet" "$base/api/v1/databases?workspace=quiet" |
    grep -E "^\s+(50|90|99)%|Requests/sec|Non-2xx"
}
echo "### the quiet tenant's GET /api/v1/databases, server otherwise idle"
measure
echo "### the same while the noisy tenant loops /schedule/upcoming?hours=744&limit=5000 from 4 clients"
: > "$dir/noise.count"
for _ in 1 2 3 4; do
  (while :; do
    api "$noisy" -o /dev/null -w '%{http_code} %{time_total}\n' "$base/api/v1/schedule/upcoming?hours=744&limit=5000" >> "$dir/noise.count"
  done) &
done
sleep 2
measure
kill $(jobs -p | tail -n 4) 2>/dev/null || true
sleep 0.5
python3 - "$dir/noise.count" "${DURATION%s}" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if len(l.split()) == 2]
codes = {}
for c, _ in rows:
    codes[c] = codes.get(c, 0) + 1
times = sorted(float(t) for c, t in rows if c == "200")
p = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1000 if times else float("nan")
print(f"noisy tenant: {len(rows)} upcoming requests in about {float(sys.argv[2]) + 2:.0f} s, answers {codes}, "
      f"latency p50 {p(0.5):.0f} ms, p99 {p(0.99):.0f} ms")
PY
