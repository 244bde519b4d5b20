#!/usr/bin/env bash
# README command 2: the whole test suite, integration tests on a real local broker
# (started and stopped by the tests through streams/broker.py, on ports 19092/19093).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$ROOT/ops/bootstrap.sh"
cd "$ROOT"
exec "$HEADWATER_VENV/bin/python" -m pytest "$@"
