# Sourced by the ops/ scripts: where the virtual environment lives, and a check for tools.
# The environment is outside the clone (PyTorch is several GB), so every clone and every
# CI run on this machine reuses it; HEADWATER_VENV moves it.
HEADWATER_VENV="${HEADWATER_VENV:-$HOME/.cache/headwater/venv}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

need() {  # need TOOL "what to install"
  command -v "$1" >/dev/null 2>&1 || { echo "headwater: '$1' not found: install $2" >&2; exit 1; }
}
