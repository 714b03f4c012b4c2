#!/usr/bin/env bash
# Tracing overhead, measured side by side in one run: the same agent binary in front of the
# bench upstream (nginx `return 200` from ../shared/bench/upstream.sh) with
#   off     tracing off (ids and traceparent still flow)
#   export  100% sampling, every span exported over OTLP/HTTP to a local receiver
#           (a second nginx answering 200 to POST /v1/traces on 127.0.0.1:18290)
# Prints median requests/s per target and the median paired ratio to `off`.
# Usage: agent/bench/tracing-overhead.sh   (ROUNDS, WRK_CONNS, WRK_DURATION, WORKERS)
set -euo pipefail
cd "$(dirname "$0")/../.."
BENCH=${BENCH:-../shared/bench}
ROUNDS=${ROUNDS:-5}; WRK_CONNS=${WRK_CONNS:-50}; WRK_DURATION=${WRK_DURATION:-8s}; WORKERS=${WORKERS:-1}
TMP=$(mktemp -d /tmp/minirag-tracing-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; "$BENCH/upstream.sh" stop >/dev/null 2>&1 || true; rm -rf "$TMP"; }
trap cleanup EXIT
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "needs wrk and nginx (apt-get install wrk nginx)"; exit 1; }
cargo build --release -p minirag-agent >/dev/null
"$BENCH/upstream.sh" start >/dev/null

# The OTLP receiver: nginx reading each request body fully and answering 200.
cat > "$TMP/receiver.conf" <<CONF
worker_processes 1;
daemon off;
pid $TMP/receiver.pid;
error_log $TMP/receiver-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $TMP;
  client_max_body_size 64m;
  client_body_buffer_size 16m;
  server {
    listen 127.0.0.1:18290;
    location = /v1/traces { if (\$request_method = POST) { return 200; } return 405; }
  }
}
CONF
nginx -c "$TMP/receiver.conf" -p "$TMP" & PIDS+=($!)

printf "access_log:\n  stdout: false\n  file: $TMP/access-off.log\n" > "$TMP/off.yaml"
printf "access_log:\n  stdout: false\n  file: $TMP/access-export.log\n" > "$TMP/export.yaml"
declare -A PORT=([off]=18284 [export]=18285)
TOKIO_WORKER_THREADS=$WORKERS target/release/minirag-agent run --config "$TMP/off.yaml" --listen 127.0.0.1:${PORT[off]} \
  --admin-listen 127.0.0.1:18384 --upstream http://127.0.0.1:18081 2>"$TMP/off.err" & PIDS+=($!)
TOKIO_WORKER_THREADS=$WORKERS OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:18290 OTEL_TRACES_SAMPLER=always_on \
  target/release/minirag-agent run --config "$TMP/export.yaml" --listen 127.0.0.1:${PORT[export]} \
  --admin-listen 127.0.0.1:18385 --upstream http://127.0.0.1:18081 2>"$TMP/export.err" & PIDS+=($!)
sleep 1
for t in off export; do
  code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:${PORT[$t]}/)
  [ "$code" = 200 ] || { echo "$t answered $code"; cat "$TMP/$t.err"; exit 1; }
  wrk -t1 -c"$WRK_CONNS" -d2s http://127.0.0.1:${PORT[$t]}/ >/dev/null
done
declare -A RPS RATIO
ORDERS=("off export" "export off")
for r in $(seq 1 "$ROUNDS"); do
  declare -A THIS=()
  # Alternate the order each round so neither target always runs first on a noisy box.
  for t in ${ORDERS[$(( (r - 1) % 2 ))]}; do
    rps=$(wrk -t1 -c"$WRK_CONNS" -d"$WRK_DURATION" http://127.0.0.1:${PORT[$t]}/ | awk '/Requests\/sec/ {print $2}')
    THIS[$t]=$rps; RPS[$t]="${RPS[$t]:-} $rps"; echo "round $r $t: $rps req/s"
  done
  for t in off export; do RATIO[$t]="${RATIO[$t]:-} $(echo "${THIS[$t]} / ${THIS[off]}" | bc -l)"; done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf "\n%-8s %12s %22s\n" target rps_median "median paired ratio"
for t in off export; do
  printf "%-8s %12.0f %22.3f\n" "$t" "$(echo "${RPS[$t]}" | median)" "$(echo "${RATIO[$t]}" | median)"
done
# The export side's own account: spans sent, dropped (queue full) and failed.
curl -s http://127.0.0.1:18385/metrics | grep -E '^minirag_agent_otlp_spans_(exported|dropped|failed)_total'
