#!/usr/bin/env bash
# The local Kafka broker without Docker: ops/kafka.sh start|stop|status.
# Same code as `headwater kafka ...` (streams/broker.py, jars pinned in ops/kafka/pom.xml).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$ROOT/ops/bootstrap.sh" >&2
exec "$HEADWATER_VENV/bin/headwater" kafka "$@"
