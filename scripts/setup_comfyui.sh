#!/usr/bin/env bash
# The second developer set-up command: a real ComfyUI v0.8.0 (the pack's minimum) with its own venv,
# for the real-server tests, the browser tests and the benchmarks. Idempotent.
#
#   bash scripts/setup_comfyui.sh
#
# Where ComfyUI comes from, first match wins:
#   1. COMFYUI_ROOT=<your ComfyUI checkout> (and COMFYUI_PYTHON=<its python> unless a venv sits beside
#      or inside it): checked (main.py, torch importable), nothing is installed.
#   2. A ComfyUI set-up kit (a folder with setup.sh and make_tiny_ckpt.py: COMFY_HARNESS_DIR, or
#      shared/tools/comfy-harness beside this checkout): its setup.sh lays ComfyUI out under
#      ${COMFY_ROOT:-~/.cache/comfy-harness} from its bundled source, with a CPU torch venv; its
#      make_tiny_ckpt.py then builds the tests' tiny random checkpoints.
#   3. Otherwise: git clone of ComfyUI's v0.8.0 tag into $COMFY_ROOT/ComfyUI and a venv beside it with
#      torch and ComfyUI's requirements (TORCH_SPEC, default torch==2.13.0, takes pip's default index;
#      set PIP_EXTRA_INDEX_URL for a CPU or CUDA build). The tests then need FASTDRAG_TEST_CKPT (an
#      SD1.5 checkpoint) or a kit's make_tiny_ckpt.py (COMFY_HARNESS_DIR) for their checkpoints.
# Ends by printing the COMFYUI_ROOT / COMFYUI_PYTHON the tests and benchmarks will use.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMFY_ROOT=${COMFY_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/comfy-harness}
COMFY_TAG=v0.8.0
say() { printf '[setup_comfyui] %s\n' "$*"; }
die() { printf '[setup_comfyui] %s\n' "$*" >&2; exit 2; }

check() {  # check ROOT PYTHON: a usable ComfyUI, or exit 2 with what is wrong
  [[ -f $1/main.py ]] || die "$1 has no main.py: not a ComfyUI checkout"
  [[ -x $2 ]] || die "no python at $2: set COMFYUI_PYTHON to the python that runs $1"
  "$2" -c 'import torch' 2>/dev/null || die "$2 cannot import torch: install ComfyUI's requirements into it"
  say "ComfyUI $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$1/comfyui_version.py" 2>/dev/null) at $1"
  say "export COMFYUI_ROOT=$1 COMFYUI_PYTHON=$2"
}

python_of() {  # python_of ROOT: COMFYUI_PYTHON, else a venv beside or inside the checkout (as the tests find it)
  python3 -c 'import sys; sys.path.insert(0, sys.argv[2]); import comfy_client as c; print(c.comfy_python(sys.argv[1]))' \
    "$1" "$REPO/benchmarks"
}

if [[ -n ${COMFYUI_ROOT:-} ]]; then
  check "$COMFYUI_ROOT" "$(python_of "$COMFYUI_ROOT")"
  exit 0
fi

KIT=${COMFY_HARNESS_DIR:-$(cd "$REPO/.." && pwd)/shared/tools/comfy-harness}
if [[ -f $KIT/setup.sh ]]; then
  say "ComfyUI from the set-up kit $KIT"
  COMFY_ROOT=$COMFY_ROOT bash "$KIT/setup.sh"
else
  command -v git >/dev/null || die "no set-up kit and no git: install git, or set COMFYUI_ROOT to your ComfyUI"
  if [[ ! -f $COMFY_ROOT/ComfyUI/main.py ]]; then
    say "cloning ComfyUI $COMFY_TAG into $COMFY_ROOT/ComfyUI"
    mkdir -p "$COMFY_ROOT"
    git clone --quiet --depth 1 --branch "$COMFY_TAG" https://github.com/comfyanonymous/ComfyUI "$COMFY_ROOT/ComfyUI"
  fi
  if [[ ! -x $COMFY_ROOT/venv/bin/python ]]; then
    say "creating $COMFY_ROOT/venv"
    python3 -m venv "$COMFY_ROOT/venv"
  fi
  "$COMFY_ROOT/venv/bin/python" -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
  "$COMFY_ROOT/venv/bin/python" -m pip install --quiet -r "$COMFY_ROOT/ComfyUI/requirements.txt"
fi
check "$COMFY_ROOT/ComfyUI" "$(COMFYUI_PYTHON= python_of "$COMFY_ROOT/ComfyUI")"
