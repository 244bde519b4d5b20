#!/usr/bin/env bash
# README command 1, the main job: install what is needed, start a local Kafka, train the
# sensor model, start the worker, replay NASA's shuttle sensor readings into
# sensor-events, and watch predictions arrive (count, rate, latency, samples); then stop
# the worker, and the broker if this script started it.
#   DEMO_EVENTS  events to replay (default: all 49,097)
#   DEMO_RATE    events/s (default 10000; 0 = as fast as possible)
#   DEMO_LABELS_DELAY  each event's label is sent this much event time after it (1m)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$ROOT/ops/bootstrap.sh"
cd "$ROOT"
hw="$HEADWATER_VENV/bin/headwater"
# each run has its own topics and state (feature state is event-time: a replay of the same
# events into an old run's state would be late); they are dropped when the demo ends
run="$(date +%s)"
export HEADWATER_TOPIC_PREFIX="${HEADWATER_TOPIC_PREFIX-demo-$run-}"
export HEADWATER_APP_ID="${HEADWATER_APP_ID:-headwater-demo-$run}"
events="${DEMO_EVENTS:-49097}"
# shuttle events are one second apart in event time, and at 10,000 events/s the four
# partitions drift hours apart: a label waits for its event's features up to the horizon
export HEADWATER_HEAD_HORIZON="${HEADWATER_HEAD_HORIZON:-1d}"
rate="${DEMO_RATE:-10000}"
mkdir -p .cache

started_kafka=0
if ! "$hw" kafka status 2>/dev/null | grep -q "kafka running"; then
  "$hw" kafka start 2>/dev/null
  started_kafka=1
fi
"$hw" train shuttle 2>/dev/null

log=.cache/demo-worker.log
echo "worker log: $log   metrics: http://127.0.0.1:${HEADWATER_WEB_PORT:-6066}/metrics"
"$hw" worker -l info >"$log" 2>&1 &
worker=$!
cleanup() {
  kill -TERM "$worker" 2>/dev/null && wait "$worker" 2>/dev/null || true
  "$hw" topics drop 2>/dev/null || true
  if [ "$started_kafka" = 1 ]; then "$hw" kafka stop 2>/dev/null; fi
}
trap cleanup EXIT
metrics="http://127.0.0.1:${HEADWATER_WEB_PORT:-6066}/metrics"
for _ in $(seq 1 600); do  # the web server answers once the worker has recovered its state
  curl -sf -o /dev/null "$metrics" && break
  kill -0 "$worker" 2>/dev/null || { echo "worker exited; see $log" >&2; exit 1; }
  sleep 0.1
done
curl -sf -o /dev/null "$metrics" || { echo "worker not ready after 60 s; see $log" >&2; exit 1; }

since=$(( $(date +%s%N) / 1000000 ))
"$hw" produce shuttle --limit "$events" --rate "$rate" --labels-delay "${DEMO_LABELS_DELAY:-1m}" \
  2>/dev/null &
producer=$!
"$hw" watch --since-ms "$since" --expect "$events" --idle 60 2>/dev/null
wait "$producer"
dead=$(curl -sf "$metrics" |
       awk '/^headwater_dead_letters_total/ {s += $2} END {print s + 0}' || echo "?")
echo "dead letters: $dead (bad input goes to ${HEADWATER_TOPIC_PREFIX}dead-letters)"
# the online head learns from the labels as they come (test-then-train); its metrics are
# on `metrics` and /metrics, reported every HEADWATER_LEARN_REPORT_S
for _ in $(seq 1 100); do  # until the head has learned every label, at most 20 s
  learned=$(curl -sf "$metrics" | awk '/^headwater_head_labels_total\{.*outcome="learned"/ {s += $2}
                                      END {print s + 0}' || echo 0)
  [ "${learned%.*}" -ge "$events" ] && break
  sleep 0.2
done
curl -sf "$metrics" | awk '/^headwater_(prequential|head_version)\{/ {
  sub(/^headwater_/, ""); printf "  %s\n", $0 }' | sort || true
echo "demo done: worker and broker stop now"
