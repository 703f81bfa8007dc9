#!/usr/bin/env bash
# Launch the standard or Refine trainer (the seed's finetune_RL.sh). Set the variables below from the environment:
#   MODEL=/models/Qwen2.5-VL-7B-Instruct DATA=data/koniq.json IMAGE_ROOT=/data/koniq TRAINER=refine bash finetune_RL.sh
# Paths are read from the folder you run this script in, like any command's: relative DATA, IMAGE_ROOT, VIDEO_ROOT,
# OUTPUT, MODEL and PYTHON, the extra arguments and the paths inside a recipe. RECIPE and DS_CONFIG may also name the
# repository's own files (configs/...). Lists (several DATA files, one root per file) are space-separated; a single
# path that contains spaces works when it exists.
# With no MODEL and no RECIPE it runs the embedded demo (a tiny format-warmed model on the repository's examples/,
# settings that show learning on a CPU in about a minute). Extra arguments go to `python -m vqrl.grpo`; the watchdog
# appends `--resume auto` on restart.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HERE=$PWD

abs() {  # a path from the caller's folder, made absolute (an empty value stays empty)
  if [[ -z $1 || $1 == /* ]]; then printf '%s' "$1"; else printf '%s/%s' "$HERE" "$1"; fi
}
abs_or_repo() {  # the caller's file if it exists, else the repository's (configs/...), else the caller's path
  if [[ -z $1 || $1 == /* || -e $HERE/$1 || ! -e $REPO/$1 ]]; then abs "$1"; else printf '%s/%s' "$REPO" "$1"; fi
}
paths() {  # one path (kept whole when it exists, spaces and all) or a space-separated list, each made absolute
  local value=$1 part
  if [[ -z $value ]]; then return; fi
  if [[ -e $(abs "$value") ]]; then abs "$value"; printf '\n'; return; fi
  for part in $value; do abs "$part"; printf '\n'; done
}

RECIPE=$(abs_or_repo "${RECIPE:-}")   # a YAML in configs/recipes/: then only the variables you set override it
MODEL=${MODEL:-}                      # local folder or hub id; empty = the embedded tiny model (the demo)
if [[ -n $MODEL && -e $(abs "$MODEL") ]]; then MODEL=$(abs "$MODEL"); fi
demo_args=()
if [[ -z $RECIPE && -z $MODEL ]]; then   # the embedded demo
  TRAINER=${TRAINER:-standard}
  DATA=${DATA:-$REPO/examples/RL_examples.json}
  IMAGE_ROOT=${IMAGE_ROOT:-$REPO/examples}
  VIDEO_ROOT=${VIDEO_ROOT:-$REPO/examples}
  OUTPUT=${OUTPUT:-$REPO/outputs/demo}
  MAX_STEPS=${MAX_STEPS:-30}
  NUM_GENERATIONS=${NUM_GENERATIONS:-4}
  BATCH=${BATCH:-32}                          # completions per device per step; a multiple of NUM_GENERATIONS
  MAX_COMPLETION=${MAX_COMPLETION:-32}
  LR=${LR:-3e-3}                              # for a 0.3 M-parameter model; a real one wants ~1e-6
  SAVE_STEPS=${SAVE_STEPS:-10}
  SAVE_TOTAL_LIMIT=${SAVE_TOTAL_LIMIT:-2}
  demo_args=(--reward_funcs format score_l1 --lr_scheduler_type constant_with_warmup --warmup_steps 5
             --max_pixels 12544)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # a 0.3 M-parameter model: more threads only wait on each other
elif [[ -z $RECIPE ]]; then              # your model: the seed's reference recipe unless you say otherwise
  TRAINER=${TRAINER:-standard}                # standard | refine   (vllm: finetune_RL_vllm.sh)
  DATA=${DATA:-$REPO/examples/RL_examples.json}
  IMAGE_ROOT=${IMAGE_ROOT:-$REPO/examples}
  VIDEO_ROOT=${VIDEO_ROOT:-$REPO/examples}
  OUTPUT=${OUTPUT:-outputs/run}
  MAX_STEPS=${MAX_STEPS:-1000}
  NUM_GENERATIONS=${NUM_GENERATIONS:-8}
  BATCH=${BATCH:-8}
  MAX_COMPLETION=${MAX_COMPLETION:-512}
  LR=${LR:-1e-6}
  SAVE_STEPS=${SAVE_STEPS:-100}
  SAVE_TOTAL_LIMIT=${SAVE_TOTAL_LIMIT:-3}
fi
DATA_WEIGHTS=${DATA_WEIGHTS:-}                # e.g. "1 0.5" to take half of the second file
NPROC=${NPROC:-auto}                          # processes (GPUs); auto = every visible GPU, or the CPU if none
DS_CONFIG=$(abs_or_repo "${DS_CONFIG:-configs/accelerate/zero3.yaml}")
PYTHON=${PYTHON:-python}
if [[ $PYTHON == */* ]]; then PYTHON=$(abs "$PYTHON"); fi

# --- The seed's reference setup (8x A100-80GB, Qwen2.5-VL-7B, ZeRO-3) -------------------------------------------
# MODEL=Qwen/Qwen2.5-VL-7B-Instruct DATA=data/RL_train.json IMAGE_ROOT=/data/images VIDEO_ROOT=/data/videos
# OUTPUT=outputs/qwen25vl7b_grpo NPROC=8 MAX_STEPS=2000 NUM_GENERATIONS=8 BATCH=8 MAX_COMPLETION=512 LR=1e-6
# EXTRA: --bf16 true --gradient_checkpointing true --beta 0.04 --save_steps 100 --save_total_limit 3
#        --max_pixels 802816 --reward_funcs format answer --report_to tensorboard
# -----------------------------------------------------------------------------------------------------------------

if [[ $NPROC == auto ]]; then
  NPROC=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
fi
args=()
[[ -n $RECIPE ]] && args+=(--config "$RECIPE")
flag() { [[ -n ${2:-} ]] && args+=("--$1" "$2") || true; }
list() {  # a flag with one or more paths
  local name=$1 items=()
  mapfile -t items < <(paths "${2:-}")
  if [[ ${#items[@]} -gt 0 ]]; then args+=("--$name" "${items[@]}"); fi
}
flag trainer "${TRAINER:-}"; list data_files "${DATA:-}"
if [[ -n $DATA_WEIGHTS ]]; then read -r -a weights <<< "$DATA_WEIGHTS"; args+=(--data_weights "${weights[@]}"); fi
list image_root "${IMAGE_ROOT:-}"; list video_root "${VIDEO_ROOT:-}"; flag output_dir "$(abs "${OUTPUT:-}")"
flag max_steps "${MAX_STEPS:-}"; flag num_generations "${NUM_GENERATIONS:-}"
flag per_device_train_batch_size "${BATCH:-}"; flag max_completion_length "${MAX_COMPLETION:-}"
flag learning_rate "${LR:-}"; flag save_steps "${SAVE_STEPS:-}"; flag save_total_limit "${SAVE_TOTAL_LIMIT:-}"
flag model_name_or_path "$MODEL"
args+=(--logging_steps 1 ${demo_args[@]+"${demo_args[@]}"})

if [[ $NPROC -gt 0 ]]; then
  # accelerate reads the DeepSpeed file named inside DS_CONFIG from the current folder: name the repository's own
  # when that is where it is (the shipped configs/accelerate/*.yaml point at configs/deepspeed/*.json)
  launch=(--config_file "$DS_CONFIG" --num_processes "$NPROC")
  ds_json=$(sed -n 's/^[[:space:]]*deepspeed_config_file:[[:space:]]*//p' "$DS_CONFIG" | head -n1)
  if [[ -n $ds_json && $ds_json != /* && ! -e $HERE/$ds_json && -e $REPO/$ds_json ]]; then
    launch+=(--deepspeed_config_file "$REPO/$ds_json")
  fi
  exec "$PYTHON" -m accelerate.commands.launch "${launch[@]}" \
    -m vqrl.grpo "${args[@]}" --bf16 true --gradient_checkpointing true "$@"
else
  echo "[finetune_RL.sh] no GPU: running on the CPU" >&2
  exec "$PYTHON" -m vqrl.grpo "${args[@]}" --use_cpu true --report_to tensorboard "$@"
fi
