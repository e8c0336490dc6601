#!/bin/bash
# Runs diffmem on every host of a Cloud TPU VM slice (single host or pod), one JAX process per host.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_vm.sh --config=configs/prune_dit.py --workdir=/mnt/shared/run
#   SETUP=1 TPU_NAME=... ZONE=... launch/tpu_vm.sh ...   # first clone/update and install on all hosts
#
# Env: TPU_NAME, ZONE (required); PROJECT (optional, else gcloud's default); REPO (git URL used by SETUP=1);
# REPO_DIR (checkout on the hosts, default $HOME/diffmem of the remote user); LOG_DIR (on each host, default
# $HOME/diffmem_logs); RUN_NAME (log file name, default diffmem-<date>-<time>); FOREGROUND=1 keeps the run
# attached to the ssh session (Ctrl-C or a dropped connection then ends it).
# The run is detached from the ssh session (setsid nohup, stdin from /dev/null): the script returns once every
# host has started its process, and each host logs to $LOG_DIR/$RUN_NAME.log. Follow it (host 0 logs the
# metrics) with the `tail -f` command the script prints; stop it with `pkill -f diffmem.main` on --worker=all.
# DIFFMEM_DISTRIBUTED=1 makes diffmem.main call diffmem.runtime.initialize_distributed(), i.e.
# jax.distributed.initialize() with no arguments (DIFFMEM_COORDINATOR_ADDRESS / _NUM_PROCESSES / _PROCESS_ID are
# unset); JAX detects the TPU slice (coordinator = worker 0) by itself. --workdir must be a directory every host
# sees (NFS / Filestore or a gcsfuse mount): metrics.jsonl is written with plain file I/O by host 0, checkpoints
# by all hosts.
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
LOG_DIR="${LOG_DIR:-\$HOME/diffmem_logs}"  # expanded on the hosts
RUN_NAME="${RUN_NAME:-diffmem-$(date +%Y%m%d-%H%M%S)}"  # the same name on every host
PRE="set -e; cd $REPO_DIR; unset DIFFMEM_COORDINATOR_ADDRESS DIFFMEM_NUM_PROCESSES DIFFMEM_PROCESS_ID; \
export DIFFMEM_DISTRIBUTED=1"
if [[ "${FOREGROUND:-0}" == "1" ]]; then
  "${GCLOUD[@]}" --command="$PRE; python3 -m diffmem.main $ARGS"
  exit
fi
LOG="$LOG_DIR/$RUN_NAME.log"
"${GCLOUD[@]}" --command="$PRE; mkdir -p $LOG_DIR; \
setsid nohup python3 -m diffmem.main $ARGS > $LOG 2>&1 < /dev/null & echo \"\$(hostname): started pid \$!, log $LOG\""
echo "detached; follow host 0 with:"
echo "  ${GCLOUD[*]/--worker=all/--worker=0} --command='tail -f $LOG'"
