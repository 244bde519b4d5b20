#!/usr/bin/env bash
# Debian's Chromium, for the test that opens the replay report headless and checks it for
# console errors (tests/test_replay.py). Installed once with apt-get; skipped when there.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
command -v apt-get >/dev/null 2>&1 || {
  echo "headwater: /usr/bin/chromium missing and no apt-get: install Debian's chromium" >&2
  exit 1; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "headwater: installing Debian chromium (once)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
