#!/usr/bin/env bash
# Launch the standard or Refine trainer (the seed's finetune_RL.sh). Edit the variables below or set them from the
# environment, e.g.  TRAINER=refine MODEL=/models/Qwen2.5-VL-7B-Instruct DATA=data/koniq.json bash finetune_RL.sh
# Defaults are the embedded demo: a tiny random model on examples/, on the CPU. Extra arguments are passed to
# `python -m vqrl.grpo` (the watchdog appends `--resume auto` on restart).
set -euo pipefail
cd "$(dirname "$0")"

RECIPE=${RECIPE:-}              # a YAML in configs/recipes/: then only the variables you set override it
if [[ -z $RECIPE ]]; then       # the embedded demo's defaults
  TRAINER=${TRAINER:-standard}                # standard | refine   (vllm: finetune_RL_vllm.sh)
  DATA=${DATA:-examples/RL_examples.json}     # one or more files, space-separated
  IMAGE_ROOT=${IMAGE_ROOT:-examples}
  VIDEO_ROOT=${VIDEO_ROOT:-examples}
  OUTPUT=${OUTPUT:-outputs/demo}
  MAX_STEPS=${MAX_STEPS:-8}
  NUM_GENERATIONS=${NUM_GENERATIONS:-4}
  BATCH=${BATCH:-8}                           # per device; a multiple of NUM_GENERATIONS
  MAX_COMPLETION=${MAX_COMPLETION:-48}
  LR=${LR:-1e-5}
  SAVE_STEPS=${SAVE_STEPS:-4}
  SAVE_TOTAL_LIMIT=${SAVE_TOTAL_LIMIT:-2}
fi
MODEL=${MODEL:-}                              # local path or hub id; empty = embedded tiny Qwen2.5-VL
DATA_WEIGHTS=${DATA_WEIGHTS:-}                # e.g. "1 0.5" to take half of the second file
NPROC=${NPROC:-auto}                          # processes (GPUs); auto = every visible GPU, or the CPU if none
DS_CONFIG=${DS_CONFIG:-configs/accelerate/zero3.yaml}
PYTHON=${PYTHON:-python}

# --- The seed's reference setup (8x A100-80GB, Qwen2.5-VL-7B, ZeRO-3) -------------------------------------------
# MODEL=Qwen/Qwen2.5-VL-7B-Instruct DATA=data/RL_train.json IMAGE_ROOT=/data/images VIDEO_ROOT=/data/videos
# OUTPUT=outputs/qwen25vl7b_grpo NPROC=8 MAX_STEPS=2000 NUM_GENERATIONS=8 BATCH=8 MAX_COMPLETION=512 LR=1e-6
# EXTRA: --bf16 true --gradient_checkpointing true --beta 0.04 --save_steps 100 --save_total_limit 3
#        --max_pixels 802816 --reward_funcs format answer --report_to tensorboard
# -----------------------------------------------------------------------------------------------------------------

if [[ $NPROC == auto ]]; then
  NPROC=$($PYTHON -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
fi
args=()
[[ -n $RECIPE ]] && args+=(--config "$RECIPE")
flag() { [[ -n ${2:-} ]] && args+=("--$1" ${2}) || true; }   # unquoted ${2}: DATA may list several files
flag trainer "${TRAINER:-}"; flag data_files "${DATA:-}"; flag data_weights "$DATA_WEIGHTS"
flag image_root "${IMAGE_ROOT:-}"; flag video_root "${VIDEO_ROOT:-}"; flag output_dir "${OUTPUT:-}"
flag max_steps "${MAX_STEPS:-}"; flag num_generations "${NUM_GENERATIONS:-}"
flag per_device_train_batch_size "${BATCH:-}"; flag max_completion_length "${MAX_COMPLETION:-}"
flag learning_rate "${LR:-}"; flag save_steps "${SAVE_STEPS:-}"; flag save_total_limit "${SAVE_TOTAL_LIMIT:-}"
flag model_name_or_path "$MODEL"
args+=(--logging_steps 1)

if [[ $NPROC -gt 0 ]]; then
  exec $PYTHON -m accelerate.commands.launch --config_file "$DS_CONFIG" --num_processes "$NPROC" \
    -m vqrl.grpo "${args[@]}" --bf16 true --gradient_checkpointing true "$@"
else
  echo "[finetune_RL.sh] no GPU: running on the CPU" >&2
  exec $PYTHON -m vqrl.grpo "${args[@]}" --use_cpu true --report_to tensorboard "$@"
fi
