#!/usr/bin/env bash
# Watches a (spot) TPU VM; when it is preempted, recreates it, reinstalls and relaunches the
# same config with --resume.  A SIGTERM on preemption makes pile-jax save a checkpoint first,
# and --resume continues from the latest one (params, optimizer, sampler position, RNG).
#   WORKDIR=gs://my-bucket/pile-run REPO_URL=... bash tpu_scripts/resume_after_preemption.sh configs/train_pile.yaml
source "$(dirname "$0")/common.sh"
config=${1:?usage: resume_after_preemption.sh CONFIG [pile-jax train options]}; shift
here=$(dirname "$0")
while true; do
  state=$(tpu_state)
  case "$state" in
    READY) ;;
    PREEMPTED|TERMINATED|MISSING)
      echo "$(date -u +%FT%TZ) $TPU_NAME is $state: recreating"
      [ "$state" = "MISSING" ] || gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$TPU_ZONE" --quiet
      bash "$here/create_tpu_vm.sh" && bash "$here/install.sh" && bash "$here/launch.sh" "$config" --resume "$@" ;;
    *) echo "$(date -u +%FT%TZ) $TPU_NAME is $state" ;;
  esac
  if tpu_ssh_all "grep -q 'training finished' ~/pile-train.log" 2>/dev/null; then echo "finished"; exit 0; fi
  sleep 300
done
