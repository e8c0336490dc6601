#!/bin/bash
# A sweep on SLURM: one array task per run of launch/sweep.py (one GPU each), then one job that assembles.
#
# Submit from the repository root; the runs are the config's get_sweep(arg) list, numbered 0..N-1 in the order
# `python launch/sweep.py ... --dry_run` prints them. Either let the script submit both jobs:
#
#   bash launch/slurm_sweep.sh --config=configs/gmm_memorization.py:paper --workdir=/shared/runs/gmm
#   SBATCH_ARGS="--partition=gpu --time=4:00:00" MAX_CONCURRENT=4 bash launch/slurm_sweep.sh --config=... --workdir=...
#
# or submit them by hand (the same script: an array task runs run $SLURM_ARRAY_TASK_ID, a plain job assembles):
#
#   N=$(python launch/sweep.py --config=configs/gmm_memorization.py:paper --workdir=/shared/runs/gmm --count)
#   JOB=$(sbatch --parsable --array=0-$((N-1)) launch/slurm_sweep.sh \
#         --config=configs/gmm_memorization.py:paper --workdir=/shared/runs/gmm)
#   sbatch --dependency=afterok:$JOB --kill-on-invalid-dep=yes --output=%x-%j-assemble.out launch/slurm_sweep.sh \
#         --config=configs/gmm_memorization.py:paper --workdir=/shared/runs/gmm
#
# Every argument goes to launch/sweep.py, so `--config.KEY=VALUE` overrides reach every run and the assembling
# run. Array task i runs `python launch/sweep.py ARGS --run_index=i`, i.e. one `python -m diffmem.main
# --config=FILE:ARG --workdir=WORKDIR [--config.* given] [run i's overrides]` in the foreground; its log is
# %x-%A_%a.out (job name, array job id, task id) in the submit directory. All tasks use the SAME --workdir (it
# must be on a filesystem every node sees): the experiments keep each finished cell there under a hash of its
# settings, which is what lets the assembling job (sweep.py --assemble_only, after every task succeeded) write
# results.json and the plots without redoing any work; a re-submission skips the cells already done.
# Each task is one single-process JAX run (DIFFMEM_DISTRIBUTED is unset); for one experiment across many GPUs
# use launch/slurm.sh. CPU-only sweeps: SBATCH_ARGS="--gpus=0" (sbatch options override the #SBATCH lines).
# Env: PYTHON (default python), SBATCH_ARGS and MAX_CONCURRENT (array tasks at a time; submit mode only).
#SBATCH --job-name=diffmem-sweep
#SBATCH --ntasks=1
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=%x-%A_%a.out
set -euo pipefail

PYTHON="${PYTHON:-python}"  # e.g. PYTHON=/path/to/venv/bin/python bash launch/slurm_sweep.sh ...
export PYTHON

if [[ -z "${SLURM_JOB_ID:-}" ]]; then  # not inside a job: submit the array and the assembling job
  [[ -f launch/sweep.py ]] || { echo "slurm_sweep.sh: run it from the diffmem repository root" >&2; exit 2; }
  N=$("$PYTHON" launch/sweep.py "$@" --count)
  read -r -a EXTRA <<< "${SBATCH_ARGS:-}"
  ARRAY="0-$((N - 1))${MAX_CONCURRENT:+%$MAX_CONCURRENT}"
  JOB=$(sbatch --parsable ${EXTRA[@]+"${EXTRA[@]}"} --array="$ARRAY" "$0" "$@")
  JOB="${JOB%%;*}"  # --parsable prints 'id' or 'id;cluster'
  ASM=$(sbatch --parsable ${EXTRA[@]+"${EXTRA[@]}"} --output=%x-%j-assemble.out --dependency="afterok:$JOB" \
        --kill-on-invalid-dep=yes "$0" "$@")
  echo "submitted array job $JOB ($N runs, --array=$ARRAY) and assembling job ${ASM%%;*} (after all succeeded)"
  exit 0
fi

cd "${SLURM_SUBMIT_DIR:-.}"
unset DIFFMEM_DISTRIBUTED DIFFMEM_COORDINATOR_ADDRESS DIFFMEM_NUM_PROCESSES DIFFMEM_PROCESS_ID
if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
  exec "$PYTHON" launch/sweep.py "$@" --run_index="$SLURM_ARRAY_TASK_ID"
else
  exec "$PYTHON" launch/sweep.py "$@" --assemble_only
fi
