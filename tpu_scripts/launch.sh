#!/usr/bin/env bash
# Launches the same training config on all workers of the slice at once (a pod slice needs every
# host: each one runs `pile-jax train` with distributed.enabled=true, which calls
# jax.distributed.initialize() with no arguments, so Cloud TPU fills in the coordinator and the
# process ids). Every host prepares the same candidates; model teachers score a slice of the
# queries per host (gathered); process 0 writes the shared files (teacher files, ranking groups,
# model.json, results) to WORKDIR, then a barrier; each host reads its own shard of every global
# batch. WORKDIR must be a gs:// path on a pod slice.
#   WORKDIR=gs://my-bucket/pile-run bash tpu_scripts/launch.sh configs/train_pile.yaml [--resume] [--set k=v ...]
# The exit status is appended to ~/pile-train.log: 0 done, 2 bad input (one line says which), 75
# preempted after saving a checkpoint (relaunch with --resume), anything else a crash.
source "$(dirname "$0")/common.sh"
config=${1:?usage: launch.sh CONFIG [pile-jax train options]}; shift
if [ -z "$WORKDIR" ]; then echo "set WORKDIR (a gs:// path for pod slices, shared by all hosts)" >&2; exit 2; fi
args="$*"
tpu_ssh_all "source ~/pile-venv/bin/activate && cd ~/pile_jax &&
  nohup bash -c 'pile-jax train $config --out $WORKDIR --set distributed.enabled=true $args; echo \"pile-jax exit status \$?\"' > ~/pile-train.log 2>&1 &
  echo launched on \$(hostname)"
echo "logs: gcloud compute tpus tpu-vm ssh $TPU_NAME --zone $TPU_ZONE --worker=0 --command 'tail -f ~/pile-train.log'"
