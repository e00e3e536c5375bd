# Shared by the slurm/*.slurm templates (sourced; see slurm/README.md).
#
# bd_init NAME USAGE  refuse to run outside SLURM (saying: sbatch slurm/NAME USAGE), go to the repository
#                     (SLURM_SUBMIT_DIR: sbatch runs a copy of the script, so its own path says nothing),
#                     activate $BABYDISTILL_VENV
# bd_train RECIPE ... train/distill/WML one recipe with --resume through python -m launch (torchrun
#                     across the job's GPUs and nodes; $BABYDISTILL_PROCS_PER_NODE processes per node
#                     instead of one per GPU when set), DeepSpeed from $BABYDISTILL_DEEPSPEED, the
#                     log in <run>/logs/, and on SIGUSR2 (--signal=B:USR2@T) a checkpoint and a requeue
# bd_eval SCRIPT RECIPE [key=value ...] [eval options]  eval/<SCRIPT> on the recipe's finished model
#                     (every peer for WML); the key=value arguments locate the run, as in its training

bd_fail() { echo "error: $*" >&2; exit 2; }

bd_init() {
  local name=$1 usage=$2
  if [[ -z "${SLURM_JOB_ID:-}" ]]; then
    bd_fail "slurm/$name is a SLURM batch script; submit it from the repository root: sbatch slurm/$name $usage (or run the python command inside it directly)"
  fi
  BD_REPO=${SLURM_SUBMIT_DIR:-$PWD}
  [[ -f "$BD_REPO/launch_grid.py" ]] || bd_fail "SLURM_SUBMIT_DIR=$BD_REPO is not the babydistill repository; run sbatch from the repository root"
  cd "$BD_REPO"
  if [[ -n "${BABYDISTILL_VENV:-}" ]]; then
    [[ -f "$BABYDISTILL_VENV/bin/activate" ]] || bd_fail "BABYDISTILL_VENV=$BABYDISTILL_VENV has no bin/activate"
    # shellcheck disable=SC1091
    source "$BABYDISTILL_VENV/bin/activate"
  fi
  BD_PYTHON=${BABYDISTILL_PYTHON:-python}
  export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
}

bd_where() {  # sets BD_KIND and BD_RUN for a recipe and overrides
  local where
  where=$("$BD_PYTHON" -m launch.where "$@") || exit 2
  BD_KIND=${where%% *}
  BD_RUN=${where#* }
}

bd_log_to_run() {  # from here on, this job's output also goes to <run>/logs/slurm-<job>.log
  mkdir -p "$BD_RUN/logs"
  # tee ignores the SIGTERM (and Ctrl-C) that stops the job: it ends when its writers do, after their last line
  exec > >(trap '' INT TERM; exec tee -a "$BD_RUN/logs/slurm-${SLURM_JOB_ID}.log") 2>&1
}

bd_train() {
  local recipe=$1
  shift
  [[ -f "$recipe" ]] || bd_fail "$recipe: no such run YAML; give one such as config/runs/gpt2-44m.yaml"
  bd_where "$recipe" "$@"
  bd_log_to_run
  local sets=("$@")
  [[ -n "${BABYDISTILL_DEEPSPEED:-}" ]] && sets+=("train.deepspeed=$BABYDISTILL_DEEPSPEED")
  echo "job $SLURM_JOB_ID on $(hostname): $BD_KIND $recipe ${sets[*]} -> $BD_RUN"
  # launch picks the entry point and, with several processes per node or several nodes, torchrun
  bd_requeueable srun --nodes="${SLURM_NNODES:-1}" --ntasks-per-node=1 --kill-on-bad-exit=1 \
    bash -c 'trap "" USR2; exec "$@"' bd-task "$BD_PYTHON" -m launch "$recipe" "${sets[@]}" --resume
}

bd_requeueable() {
  # Runs "$@" as a job step. SIGUSR2 to this batch shell (--signal=B:USR2@T before the time limit,
  # or scancel --batch --signal=USR2) is passed to the step, whose trainer saves a checkpoint at the
  # end of its step and exits; then, unless the step finished meanwhile, the job requeues itself.
  # Finished: <run>/DONE where BD_RUN is set (a training: torchrun passes on only the exit status of
  # ranks that said why they ended, launch/torchrun.py), else an exit status other than 75 (EX_TEMPFAIL:
  # stopped after saving; fine-tuning).
  # The step's processes ignore SIGUSR2 until the trainer arms its handler (torchrun never does).
  # SIGTERM (scancel, a preemption, a time limit without --signal) reaches the step's processes from SLURM itself:
  # this shell waits for them, so that their checkpoint and last line are written before the job ends.
  BD_SIGNALED=0
  trap 'BD_SIGNALED=1; scancel --signal=USR2 "$SLURM_JOB_ID" 2>/dev/null || true' USR2
  trap ':' TERM
  "$@" &
  local pid=$! rc=0
  while :; do
    wait "$pid" && rc=0 || rc=$?
    kill -0 "$pid" 2>/dev/null || break  # wait returns early when the trap runs; the step goes on
  done
  local unfinished=0
  if [[ -n "${BD_RUN:-}" ]]; then
    [[ -f "$BD_RUN/DONE" ]] || unfinished=1
  elif (( rc == 75 )); then
    unfinished=1
  fi
  if (( BD_SIGNALED && unfinished )); then
    echo "SIGUSR2: checkpoint saved; requeueing job $SLURM_JOB_ID to resume from it"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  return "$rc"
}

bd_eval() {
  # bd_eval SCRIPT RECIPE [recipe key=value ...] [python -m eval options]: the key=value arguments
  # locate the run (output.dir=..., as given to its training), the rest go to eval/SCRIPT
  local script=$1 recipe=$2
  shift 2
  local sets=() opts=()
  for a in "$@"; do
    if [[ $a != -* && $a == *=* && ${#opts[@]} -eq 0 ]]; then sets+=("$a"); else opts+=("$a"); fi
  done
  bd_where "$recipe" "${sets[@]}"
  bd_log_to_run
  [[ -f "$BD_RUN/DONE" ]] || bd_fail "$BD_RUN has no DONE; train it first (sbatch slurm/train_baselines.slurm)"
  local models=("$BD_RUN/model")
  [[ $BD_KIND == wml ]] && models=("$BD_RUN"/model/peer-*)
  for model in "${models[@]}"; do
    local out=()
    [[ $BD_KIND == wml ]] && out=(--out "$BD_RUN/eval/$(basename "$model")")
    srun --ntasks=1 bash "eval/$script" "$model" "${out[@]}" "${opts[@]}"
  done
}
