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
# Each worker's ~/pile-train.log ends with "pile-jax exit status N" (launch.sh): 75 = preempted after
# a checkpoint (relaunch with --resume); 0 without the done file, or any other status (2 bad config,
# 1 crash), stops the watcher with exit status 1 and the workers' statuses (relaunching would fail
# the same way, forever).
poll=${POLL_SECONDS:-300}
while true; do
  if workdir_has "$done_file"; then echo "finished: $WORKDIR/$done_file"; exit 0; fi
  state=$(tpu_state)
  case "$state" in
    READY)
      statuses=$(tpu_ssh_all "grep -ho 'pile-jax exit status [0-9]*' ~/pile-train.log" 2>/dev/null \
                 | awk '{print $4}' | sort -u | tr '\n' ' ' || true)
      others=$(for s in $statuses; do [ "$s" = 0 ] || [ "$s" = 75 ] || echo "$s"; done)
      if [ -n "$others" ]; then
        echo "$(date -u +%FT%TZ) stopped: pile-jax exited with status $(echo $others) on a worker (exit statuses: ${statuses% }); see ~/pile-train.log on each worker" >&2
        exit 1
      fi
      case " $statuses" in
        *" 75 "*)
          echo "$(date -u +%FT%TZ) run stopped after a checkpoint (status 75): relaunching with --resume"
          bash "$here/launch.sh" "$config" --resume "$@" ;;
        *" 0 "*)
          if workdir_has "$done_file"; then echo "finished: $WORKDIR/$done_file"; exit 0; fi
          echo "$(date -u +%FT%TZ) stopped: pile-jax exited with status 0 but $WORKDIR/$done_file is missing" >&2
          exit 1 ;;
      esac ;;
    PREEMPTED|TERMINATED|MISSING)
      echo "$(date -u +%FT%TZ) $TPU_NAME is $state: recreating"
      [ "$state" = "MISSING" ] || gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$TPU_ZONE" --quiet
      bash "$here/create_tpu_vm.sh" && bash "$here/install.sh" && bash "$here/launch.sh" "$config" --resume "$@" ;;
    *) echo "$(date -u +%FT%TZ) $TPU_NAME is $state" ;;
  esac
  sleep "$poll"
done
