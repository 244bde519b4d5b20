#!/usr/bin/env bash
# The docker compose v2 CLI plugin, to validate docker-compose.yml (`docker compose
# config`) on machines with a Docker client but no plugin. Built once from the Go module
# proxy with the machine's Go into ~/.docker/cli-plugins; no Docker engine is needed.
set -euo pipefail
COMPOSE_VERSION=v2.40.3
plugin="$HOME/.docker/cli-plugins/docker-compose"
if docker compose version >/dev/null 2>&1 || [ -x "$plugin" ]; then exit 0; fi
command -v go >/dev/null 2>&1 || {
  echo "headwater: 'docker compose' missing and no Go to build it: install docker-compose-plugin" >&2
  exit 1; }
echo "headwater: building docker compose $COMPOSE_VERSION (a few minutes, once)"
dir=$(go mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
src=$(mktemp -d)
cp -r "$dir/." "$src" && chmod -R u+w "$src"
mkdir -p "$(dirname "$plugin")"
(cd "$src" && go build -trimpath -o "$plugin.tmp" ./cmd) && mv "$plugin.tmp" "$plugin"
rm -rf "$src"
