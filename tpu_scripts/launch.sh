#!/usr/bin/env bash
# Launches the same training config on all workers of the slice.  Multi-host runs call
# jax.distributed.initialize() (Cloud TPU fills in coordinator and process ids), each host
# reads its own shard of every global batch, and the pmap'd step averages over all devices.
#   WORKDIR=gs://my-bucket/pile-run bash tpu_scripts/launch.sh configs/train_pile.yaml [--resume] [--set k=v ...]
source "$(dirname "$0")/common.sh"
config=${1:?usage: launch.sh CONFIG [pile-jax train options]}; shift
if [ -z "$WORKDIR" ]; then echo "set WORKDIR (a gs:// path for pod slices, shared by all hosts)" >&2; exit 2; fi
args="$*"
tpu_ssh_all "source ~/pile-venv/bin/activate && cd ~/pile_jax &&
  nohup pile-jax train $config --out $WORKDIR --set distributed.enabled=true $args > ~/pile-train.log 2>&1 &
  echo launched on \$(hostname)"
echo "logs: gcloud compute tpus tpu-vm ssh $TPU_NAME --zone $TPU_ZONE --worker=0 --command 'tail -f ~/pile-train.log'"
