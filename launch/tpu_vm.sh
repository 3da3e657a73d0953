#!/usr/bin/env bash
# A Cloud TPU VM (one host or a multi-host slice), run from your workstation: the same command
# starts on every worker (gcloud ... ssh --worker=all), one process per host driving its chips.
# JAX_COORDINATOR_ADDRESS is set to worker 0's internal IP, so every process calls
# jax.distributed.initialize(), which takes the process count and rank from the TPU metadata.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_vm.sh VARIANT [--config.FIELD=VALUE ...]
#   TPU_NAME=my-v5p-8 ZONE=europe-west4-b REMOTE_WORKDIR=/mnt/shared/runs/clip launch/tpu_vm.sh clip \
#       --config.model.init_checkpoint=/mnt/shared/ckpts/clip_vicuna
#
# Assumes: gcloud is installed and authenticated here, with access to the TPU (PROJECT sets
#   --project when the default project is another); every worker has the repository at
#   REMOTE_REPO (default ~/vlm_spatial) with a virtualenv at REMOTE_REPO/.venv holding
#   `pip install -e . "jax[tpu]"` (e.g. once with `--worker=all --command="git clone ... && ..."`);
#   REMOTE_WORKDIR (default REMOTE_REPO/runs/VARIANT) and the data are on a filesystem that every
#   worker sees at the same path (Filestore/NFS or a gcsfuse mount): checkpoints are written by
#   every host, metrics by host 0.
# Environment: TPU_NAME, ZONE (required), PROJECT, REMOTE_REPO, REMOTE_WORKDIR.
# Preemption (spot/preemptible TPUs send SIGTERM): the run saves and exits 143; run this command
#   again on the recreated TPU and it resumes from REMOTE_WORKDIR.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: TPU_NAME=... ZONE=... $0 VARIANT [--config.FIELD=VALUE ...]" >&2
  exit 2
fi
: "${TPU_NAME:?set TPU_NAME to the TPU VM's name}"
: "${ZONE:?set ZONE to the TPU VM's zone}"
VARIANT="$1"
shift
NAME="${VARIANT%%:*}"
REMOTE_REPO="${REMOTE_REPO:-\$HOME/vlm_spatial}"  # expanded on the workers
REMOTE_WORKDIR="${REMOTE_WORKDIR:-$REMOTE_REPO/runs/${VARIANT//:/_}}"

# Worker 0's internal address: the coordinator of jax.distributed (port 8482, JAX's default).
gcloud_args=(--zone="$ZONE" ${PROJECT:+--project="$PROJECT"})
coordinator="$(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${gcloud_args[@]}" \
  --format='value(networkEndpoints[0].ipAddress)')"
if [[ -z "$coordinator" ]]; then
  echo "error: no internal address for TPU $TPU_NAME in zone $ZONE (gcloud ... describe)" >&2
  exit 2
fi

# The remote command, with every override quoted for the remote shell.
overrides=""
if [[ $# -gt 0 ]]; then
  overrides="$(printf '%q ' "$@")"
fi
remote="cd $REMOTE_REPO && source .venv/bin/activate && \
export JAX_COORDINATOR_ADDRESS=$coordinator:8482 && \
python -m vlm_spatial.main --config=$(printf '%q' "configs/$NAME.py${VARIANT#"$NAME"}") \
--workdir=$REMOTE_WORKDIR $overrides"

gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --worker=all --command="$remote"
