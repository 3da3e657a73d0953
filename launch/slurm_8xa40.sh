#!/usr/bin/env bash
# The paper's set-up: one node with 8 x A40 (48 GB), ONE process driving all 8 local GPUs
# (no jax.distributed; the mesh spans the 8 devices: data=1, fsdp=-1, tensor=1 by default).
#
#   sbatch launch/slurm_8xa40.sh VARIANT [--config.FIELD=VALUE ...]
#   sbatch launch/slurm_8xa40.sh aimv2_2drope --config.model.init_checkpoint=/ckpts/aimv2_vicuna \
#       --config.stages.pretrain.data_file=/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json ...
#
# Assumes: submitted from the repository root (sbatch's working directory; or set REPO); a
#   virtualenv at $VENV (default REPO/.venv) with `pip install -e . "jax[cuda12]"`; the node's
#   partition/account are given on the sbatch command line if the cluster needs them
#   (sbatch -p PART -A ACCOUNT ...); WORKDIR (default REPO/runs/VARIANT) is writable.
# Environment: REPO, VENV, WORKDIR, MODULES (e.g. "cuda/12.4 cudnn": loaded with `module load`
#   when set).
# Preemption and time limit: SLURM sends SIGTERM 5 min before the limit (--signal); the run saves
#   a checkpoint and exits with 143, and this script requeues the job, which resumes from WORKDIR.
#SBATCH --job-name=vlm_spatial
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --mem=0
#SBATCH --time=48:00:00
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail

REPO="${REPO:-${SLURM_SUBMIT_DIR:-$(pwd)}}"
if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: sbatch $0 VARIANT [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
VARIANT="$1"
shift
if [[ ! -f "$REPO/configs/${VARIANT%%:*}.py" ]]; then
  echo "error: no configs/${VARIANT%%:*}.py under REPO=$REPO (submit from the repository root or set REPO)" >&2
  exit 2
fi
WORKDIR="${WORKDIR:-$REPO/runs/${VARIANT//:/_}}"
VENV="${VENV:-$REPO/.venv}"
if [[ -n "${MODULES:-}" ]]; then
  # shellcheck disable=SC2086
  module load $MODULES
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

# XLA may take most of each 48 GB GPU (the default is 75%); see perf/compile_7b.py for the budget.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"

cd "$REPO"
NAME="${VARIANT%%:*}"
set +e
srun --ntasks=1 --kill-on-bad-exit=1 \
  python -m vlm_spatial.main --config="configs/$NAME.py${VARIANT#"$NAME"}" --workdir="$WORKDIR" "$@"
rc=$?
set -e
if [[ $rc -eq 143 ]]; then
  echo "preempted or out of time: checkpoint written; requeueing job $SLURM_JOB_ID" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit $rc
