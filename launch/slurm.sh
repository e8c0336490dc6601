#!/bin/bash
# Multi-node diffmem run on SLURM: one JAX process per GPU, joined by JAX's distributed runtime.
#
#   sbatch launch/slurm.sh --config=configs/prune_dit.py --workdir=/shared/runs/prune_dit
#   sbatch --nodes=4 launch/slurm.sh --config=configs/gmm_memorization.py --workdir=/shared/runs/gmm
#
# DIFFMEM_DISTRIBUTED=1 makes diffmem.main call diffmem.runtime.initialize_distributed(), i.e.
# jax.distributed.initialize() with no arguments (the DIFFMEM_COORDINATOR_ADDRESS / _NUM_PROCESSES / _PROCESS_ID
# overrides it also reads are unset here): JAX reads the coordinator (first node of the step), process count and
# id from SLURM_* variables, and with one task per GPU gives each process device SLURM_LOCALID. That needs every
# task to see all GPUs of its node (the default with --gpus-per-node; do not add --gpus-per-task or --gpu-bind).
# train() then builds its data-parallel mesh over all GPUs of all nodes. --workdir must be on a filesystem every
# node sees (checkpoints are written by all processes, metrics.jsonl by process 0). Re-submitting the same
# command resumes from the latest checkpoint.
#SBATCH --job-name=diffmem
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

export DIFFMEM_DISTRIBUTED=1
unset DIFFMEM_COORDINATOR_ADDRESS DIFFMEM_NUM_PROCESSES DIFFMEM_PROCESS_ID  # let JAX read SLURM's values
export PYTHON="${PYTHON:-python}"  # e.g. PYTHON=/path/to/venv/bin/python sbatch ...
cd "${SLURM_SUBMIT_DIR:-.}"
srun --kill-on-bad-exit=1 "$PYTHON" -m diffmem.main "$@"
