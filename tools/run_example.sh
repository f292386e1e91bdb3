#!/usr/bin/env bash
# The README's first command: set up (once) and run the full edit example headless in a real ComfyUI.
#   bash tools/run_example.sh [--asset PATH] [--workflow full_edit|full_edit_swapped_sampler|sample_only] [--out DIR]
# Uses your ComfyUI when COMFYUI_PATH is set, else the host tools/setup_env.sh installs; a real sd-v2.1-base-4view
# checkpoint from <ComfyUI>/models/mvdream when there is one, else the tiny random model (it says so: outputs are noise).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup_env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec .venv/bin/python tools/run_workflow.py "$@"
