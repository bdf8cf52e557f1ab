#!/usr/bin/env bash
# Creates a TPU VM: a single host (TPU_TYPE=v4-8) or a pod slice (e.g. TPU_TYPE=v4-32).
#   TPU_NAME=pile-jax TPU_TYPE=v4-32 TPU_SPOT=1 bash tpu_scripts/create_tpu_vm.sh
source "$(dirname "$0")/common.sh"
extra=()
[ "$TPU_SPOT" = "1" ] && extra+=(--spot)
gcloud compute tpus tpu-vm create "$TPU_NAME" \
  --zone "$TPU_ZONE" --accelerator-type "$TPU_TYPE" --version "$TPU_VERSION" "${extra[@]}"
echo "created $TPU_NAME ($TPU_TYPE in $TPU_ZONE): state $(tpu_state)"
