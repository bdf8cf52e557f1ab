#!/usr/bin/env bash
# Shared settings for the TPU scripts. Override any of them in the environment.
#   TPU_NAME      name of the TPU VM (default pile-jax)
#   TPU_ZONE      zone (default us-central2-b)
#   TPU_TYPE      accelerator type: v4-8 = single host, v4-32 / v5litepod-16 ... = pod slice
#   TPU_VERSION   TPU VM software version
#   TPU_SPOT      1 to ask for spot (preemptible) capacity
#   REPO_URL      where workers get pile_jax from (git URL); REPO_REF the branch or commit
#   WORKDIR       shared output folder: a gs:// bucket path (required on pod slices: every host
#                 reads the teacher files and ranking groups process 0 writes there, and the
#                 checkpoints live there, so a recreated VM resumes from them). pile_jax writes
#                 every file through etils.epath; gs:// needs `pip install -e .[gcs]` (gcsfs).
set -euo pipefail
TPU_NAME=${TPU_NAME:-pile-jax}
TPU_ZONE=${TPU_ZONE:-us-central2-b}
TPU_TYPE=${TPU_TYPE:-v4-8}
TPU_VERSION=${TPU_VERSION:-tpu-ubuntu2204-base}
TPU_SPOT=${TPU_SPOT:-0}
REPO_URL=${REPO_URL:-}
REPO_REF=${REPO_REF:-main}
WORKDIR=${WORKDIR:-}

tpu_ssh_all() {
  # Runs one command on every worker of the slice (all hosts of a pod slice at once).
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$TPU_ZONE" --worker=all --command "$1"
}

workdir_has() {
  # True when WORKDIR holds the file $1 (gs:// via gcloud storage, else a local path).
  case "$WORKDIR" in
    gs://*) gcloud storage ls "$WORKDIR/$1" >/dev/null 2>&1 ;;
    *) [ -e "$WORKDIR/$1" ] ;;
  esac
}

tpu_state() {
  gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$TPU_ZONE" --format='value(state)' 2>/dev/null || echo MISSING
}
