#!/bin/bash
# Runs diffmem on every host of a Cloud TPU VM slice (single host or pod), one JAX process per host.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_vm.sh --config=configs/prune_dit.py --workdir=/mnt/shared/run
#   SETUP=1 TPU_NAME=... ZONE=... launch/tpu_vm.sh ...   # first clone/update and install on all hosts
#
# Env: TPU_NAME, ZONE (required); PROJECT (optional, else gcloud's default); REPO (git URL used by SETUP=1);
# REPO_DIR (checkout on the hosts, default $HOME/diffmem of the remote user).
# DIFFMEM_DISTRIBUTED=1 makes diffmem.main call jax.distributed.initialize() with no arguments; JAX detects the
# TPU slice (coordinator = worker 0) by itself. --workdir must be a directory every host sees (NFS / Filestore or
# a gcsfuse mount): metrics.jsonl is written with plain file I/O by host 0, checkpoints by all hosts.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_DIR="${REPO_DIR:-\$HOME/diffmem}"  # expanded on the hosts
GCLOUD=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all)
if [[ -n "${PROJECT:-}" ]]; then GCLOUD+=(--project="$PROJECT"); fi

if [[ "${SETUP:-0}" == "1" ]]; then
  : "${REPO:?set REPO (git URL) for SETUP=1}"
  "${GCLOUD[@]}" --command="set -e; if [ -d $REPO_DIR/.git ]; then git -C $REPO_DIR pull --ff-only; \
else git clone $REPO $REPO_DIR; fi; python3 -m pip install -q -U 'jax[tpu]' -e $REPO_DIR"
fi

ARGS=$(printf '%q ' "$@")
"${GCLOUD[@]}" --command="cd $REPO_DIR && DIFFMEM_DISTRIBUTED=1 python3 -m diffmem.main $ARGS"
