#!/usr/bin/env bash
# Several GPU nodes, ONE process per node driving that node's GPUs; the processes join through
# jax.distributed.initialize(), which reads SLURM's variables inside the srun step (coordinator =
# first host of SLURM_STEP_NODELIST, port from SLURM_JOB_ID; SLURM_NTASKS processes; rank
# SLURM_PROCID). JAX would then make each process see only GPU number SLURM_LOCALID (its
# one-process-per-GPU default), so JAX_LOCAL_DEVICE_IDS lists all of the node's GPUs instead.
#
#   sbatch --nodes=4 launch/slurm_multinode.sh VARIANT [--config.FIELD=VALUE ...]
#   sbatch --nodes=2 launch/slurm_multinode.sh clip --config.mesh.data=2 --config.mesh.fsdp=8
#
# Assumes: submitted from the repository root (or set REPO), which every node sees at the same
#   path (shared filesystem), as it does WORKDIR (Orbax checkpoints are written by every process)
#   and the data; a virtualenv at $VENV (default REPO/.venv) with `pip install -e . "jax[cuda12]"`;
#   GPUS_PER_NODE GPUs on each node (default 8); nodes reach each other over TCP on the coordinator
#   port (JAX_COORDINATOR_PORT overrides it). Each process reads its own slice of every batch.
# Environment: REPO, VENV, WORKDIR, GPUS_PER_NODE, MODULES (loaded with `module load` when set).
# Preemption/time limit: SIGTERM 5 min before the limit, checkpoint, exit 143, requeue, resume.
#SBATCH --job-name=vlm_spatial
#SBATCH --nodes=2
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
  echo "usage: sbatch --nodes=N $0 VARIANT [--config.FIELD=VALUE ...]" >&2
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
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
if [[ -n "${MODULES:-}" ]]; then
  # shellcheck disable=SC2086
  module load $MODULES
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

export JAX_LOCAL_DEVICE_IDS
JAX_LOCAL_DEVICE_IDS="$(seq -s, 0 $((GPUS_PER_NODE - 1)))"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"

cd "$REPO"
NAME="${VARIANT%%:*}"
set +e
srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
  python -m vlm_spatial.main --config="configs/$NAME.py${VARIANT#"$NAME"}" --workdir="$WORKDIR" "$@"
rc=$?
set -e
if [[ $rc -eq 143 ]]; then
  echo "preempted or out of time: checkpoint written; requeueing job $SLURM_JOB_ID" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit $rc
