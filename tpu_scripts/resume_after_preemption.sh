#!/usr/bin/env bash
# Watches a (spot) TPU VM; when it is preempted, recreates it, reinstalls and relaunches the
# same config with --resume. On SIGTERM pile-jax saves a checkpoint to WORKDIR (gs://) and exits
# with status 75; the recreated VM's --resume continues from the latest checkpoint there (params,
# optimizer, sampler position, RNG), reusing the teacher files whose spec sidecars still match.
# The run is finished when WORKDIR holds <eval split>_metrics.json (default test_metrics.json).
#   WORKDIR=gs://my-bucket/pile-run REPO_URL=... bash tpu_scripts/resume_after_preemption.sh configs/train_pile.yaml
source "$(dirname "$0")/common.sh"
config=${1:?usage: resume_after_preemption.sh CONFIG [pile-jax train options]}; shift
here=$(dirname "$0")
done_file=${DONE_FILE:-test_metrics.json}
case "$WORKDIR" in gs://*) ;; *) echo "WORKDIR must be a gs:// path: a recreated VM starts with an empty disk" >&2; exit 2 ;; esac
while true; do
  if workdir_has "$done_file"; then echo "finished: $WORKDIR/$done_file"; exit 0; fi
  state=$(tpu_state)
  case "$state" in
    READY)
      # the VM survived but the run stopped (SIGTERM from maintenance: status 75): relaunch
      if tpu_ssh_all "grep -q 'pile-jax exit status 75' ~/pile-train.log" 2>/dev/null; then
        echo "$(date -u +%FT%TZ) run stopped after a checkpoint: relaunching with --resume"
        bash "$here/launch.sh" "$config" --resume "$@"
      fi ;;
    PREEMPTED|TERMINATED|MISSING)
      echo "$(date -u +%FT%TZ) $TPU_NAME is $state: recreating"
      [ "$state" = "MISSING" ] || gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$TPU_ZONE" --quiet
      bash "$here/create_tpu_vm.sh" && bash "$here/install.sh" && bash "$here/launch.sh" "$config" --resume "$@" ;;
    *) echo "$(date -u +%FT%TZ) $TPU_NAME is $state" ;;
  esac
  sleep 300
done
