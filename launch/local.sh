#!/usr/bin/env bash
# Run one paper variant on this machine: one process drives every local device (CPU, one or more
# GPUs, or the chips of a single-host TPU VM).
#
#   launch/local.sh VARIANT[:tiny] [--config.FIELD=VALUE ...]
#   launch/local.sh clip:tiny                              # the tiny CPU job (synthetic set), minutes
#   WORKDIR=/scratch/runs/clip launch/local.sh clip --config.model.init_checkpoint=/ckpts/clip_vicuna
#
# Assumes: this file sits in the repository's launch/ folder; configs/VARIANT.py exists; a
#   virtualenv at $VENV (default: REPO/.venv) holds `pip install -e .` (GPUs: plus jax[cuda12],
#   TPU: jax[tpu]); data and weight paths named by the config (or the overrides) are local paths.
# Environment: WORKDIR (default REPO/runs/VARIANT, ':' replaced by '_'), VENV, and any JAX/XLA
#   variable, e.g. CUDA_VISIBLE_DEVICES=0,1 to use two GPUs.
# Running the same command again resumes the run where its WORKDIR left off.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: $0 VARIANT[:tiny] [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
VARIANT="$1"
shift
NAME="${VARIANT%%:*}"
if [[ ! -f "$REPO/configs/$NAME.py" || "$NAME" == common || "$NAME" == __init__ ]]; then
  echo "error: no variant '$NAME' (configs/$NAME.py); variants:" \
    $(cd "$REPO/configs" && ls *.py | grep -v -e '^common.py$' -e '^__init__.py$' | sed 's/\.py$//') >&2
  exit 2
fi
WORKDIR="${WORKDIR:-$REPO/runs/${VARIANT//:/_}}"
VENV="${VENV:-$REPO/.venv}"
if [[ -f "$VENV/bin/activate" ]]; then
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
fi

cd "$REPO"  # the configs import configs.common
exec python -m vlm_spatial.main --config="configs/$NAME.py${VARIANT#"$NAME"}" --workdir="$WORKDIR" "$@"
