#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up the environment and the real ComfyUI host, run every test.
# Host tests use $COMFYUI_PATH when set (your own ComfyUI), else the host tools/setup_env.sh installs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup_env.sh
# headless Chromium (Debian package) for the frontend-extension test; needs root, as in CI
bash tools/install_browser.sh
export COMFYUI_PATH="${COMFYUI_PATH:-$ROOT/.host/comfyui}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec .venv/bin/python -m pytest tests "$@"
