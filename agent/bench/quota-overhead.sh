#!/usr/bin/env bash
# Quota overhead, measured side by side in one run: the same agent binary in front of the
# bench upstream (nginx `return 200` from ../shared/bench/upstream.sh) with
#   off    no identity, no quotas
#   memory JWT identity + quotas, memory backend (limits set far above the load)
#   redis  JWT identity + quotas, Redis backend (a redis-server started here)
# wrk sends the same bearer JWT to all. Prints median requests/s per target and the ratio
# to `off`. Usage: agent/bench/quota-overhead.sh   (ROUNDS, WRK_CONNS, WRK_DURATION, WORKERS)
set -euo pipefail
cd "$(dirname "$0")/../.."
BENCH=${BENCH:-../shared/bench}
ROUNDS=${ROUNDS:-8}; WRK_CONNS=${WRK_CONNS:-50}; WRK_DURATION=${WRK_DURATION:-6s}; WORKERS=${WORKERS:-1}
TMP=$(mktemp -d /tmp/minirag-quota-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do { kill -9 "$p"; wait "$p"; } 2>/dev/null || true; done; "$BENCH/upstream.sh" stop >/dev/null 2>&1 || true; rm -rf "$TMP"; }
trap cleanup EXIT
command -v wrk >/dev/null && command -v redis-server >/dev/null || { echo "needs wrk and redis-server (apt-get install wrk redis-server)"; exit 1; }
cargo build --release -p minirag-agent >/dev/null
"$BENCH/upstream.sh" start >/dev/null

python3 - "$TMP" <<'PY'
import base64, hmac, hashlib, json, sys, time
d = sys.argv[1]; secret = b"quota-bench-secret-quota-bench!!"
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=").decode()
open(f"{d}/jwks.json", "w").write(json.dumps({"keys": [{"kty": "oct", "k": b(secret)}]}))
h = b(json.dumps({"alg": "HS256"}).encode()); p = b(json.dumps({"sub": "usr_b", "workspace_id": "ws_b", "organization_id": "org_b", "exp": int(time.time()) + 86400}).encode())
sig = b(hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest())
open(f"{d}/token", "w").write(f"{h}.{p}.{sig}")
open(f"{d}/quotas.yaml", "w").write("plans:\n  free:\n    requests_per_minute: 1000000000\n    requests_per_day: 1000000000\n")
PY
REDIS_PORT=18379
redis-server --port $REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no >/dev/null & PIDS+=($!)
# Each agent writes its own access log (one shared file would be rotated by three writers).
common() { printf "access_log:\n  stdout: false\n  file: $TMP/$1-access.log\n"; }
ident="identity:\n  provider: jwt\n  jwt:\n    jwks_file: $TMP/jwks.json\nquotas:\n  policy_file: $TMP/quotas.yaml\n"
common off > "$TMP/off.yaml"
{ common memory; printf "$ident"; } > "$TMP/memory.yaml"
{ common redis; printf "$ident  backend: redis\n  redis_url: redis://127.0.0.1:$REDIS_PORT/\n"; } > "$TMP/redis.yaml"
declare -A PORT=([off]=18184 [memory]=18185 [redis]=18186)
for t in off memory redis; do
  TOKIO_WORKER_THREADS=$WORKERS target/release/minirag-agent run --config "$TMP/$t.yaml" --listen 127.0.0.1:${PORT[$t]} \
    --admin-listen 127.0.0.1:$((PORT[$t] + 100)) --upstream http://127.0.0.1:18081 2>"$TMP/$t.err" & PIDS+=($!)
done
sleep 1
AUTH="Authorization: Bearer $(cat "$TMP/token")"
for t in off memory redis; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH" http://127.0.0.1:${PORT[$t]}/)
  [ "$code" = 200 ] || { echo "$t answered $code"; cat "$TMP/$t.err"; exit 1; }
  wrk -t1 -c"$WRK_CONNS" -d2s -H "$AUTH" http://127.0.0.1:${PORT[$t]}/ >/dev/null
done
declare -A RPS RATIO
# The off/memory pair always runs back to back (the target ratio compares them; drift on
# a shared box between two distant runs is noise), alternating which goes first; redis
# alternates between running before and after the pair.
ORDERS=("off memory redis" "redis memory off" "memory off redis" "redis off memory")
for r in $(seq 1 "$ROUNDS"); do
  declare -A THIS=()
  for t in ${ORDERS[$(( (r - 1) % 4 ))]}; do
    sleep 1   # let the previous target's connections and log flush settle
    rps=$(wrk -t1 -c"$WRK_CONNS" -d"$WRK_DURATION" -H "$AUTH" http://127.0.0.1:${PORT[$t]}/ | awk '/Requests\/sec/ {print $2}')
    THIS[$t]=$rps; RPS[$t]="${RPS[$t]:-} $rps"; echo "round $r $t: $rps req/s"
  done
  for t in off memory redis; do RATIO[$t]="${RATIO[$t]:-} $(echo "${THIS[$t]} / ${THIS[off]}" | bc -l)"; done
  printf "round %s ratios: memory %.3f redis %.3f\n" "$r" "$(echo "${THIS[memory]} / ${THIS[off]}" | bc -l)" "$(echo "${THIS[redis]} / ${THIS[off]}" | bc -l)"
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf "\n%-8s %12s %22s\n" target rps_median "median paired ratio"
for t in off memory redis; do
  printf "%-8s %12.0f %22.3f\n" "$t" "$(echo "${RPS[$t]}" | median)" "$(echo "${RATIO[$t]}" | median)"
done
