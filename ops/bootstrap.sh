#!/usr/bin/env bash
# Install what headwater needs on a fresh machine: the Python environment (with the
# project in editable mode and its dev extras), the docker compose CLI plugin used to
# check docker-compose.yml, and Chromium for the report test. Safe to run again: it only
# installs what is missing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
need python3 "Python 3.11+"
need java "a Java 17+ runtime (apt-get install openjdk-17-jre-headless)"
need mvn "Apache Maven (apt-get install maven)"

if [ ! -x "$HEADWATER_VENV/bin/python" ]; then
  echo "headwater: creating $HEADWATER_VENV"
  python3 -m venv "$HEADWATER_VENV"
fi
stamp="$HEADWATER_VENV/.headwater-deps"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) $ROOT"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "headwater: installing Python dependencies (PyTorch is large the first time)"
  "$HEADWATER_VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[dev]"
  echo "$want" > "$stamp"
fi
bash "$ROOT/ops/install-compose.sh"
bash "$ROOT/ops/install-chromium.sh"
