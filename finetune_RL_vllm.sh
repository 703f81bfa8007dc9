#!/usr/bin/env bash
# Launch a trainer with vLLM rollouts (the seed's finetune_RL_vllm.sh). Same variables as finetune_RL.sh (relative
# paths are read from the folder you run it in); TRAINER defaults to vllm (= standard with vLLM rollouts), TRAINER=refine
# runs Refine with vLLM rollouts. Plus:
#   VLLM_MODE=colocate (default): vLLM inside every training process, on all GPUs.
#   VLLM_MODE=server: `trl vllm-serve` on the first VLLM_GPUS GPUs, training on the rest; the server is started,
#     health-checked and stopped by this script. For several nodes run the server on one node and point
#     VLLM_HOST at it (see README, "vLLM").
# Extra arguments go to `python -m vqrl.grpo`.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VLLM_MODE=${VLLM_MODE:-colocate}
VLLM_GPUS=${VLLM_GPUS:-1}
VLLM_HOST=${VLLM_HOST:-127.0.0.1}
VLLM_PORT=${VLLM_PORT:-8000}
VLLM_GPU_MEMORY=${VLLM_GPU_MEMORY:-0.3}      # colocate: share of each GPU that vLLM may take
VLLM_TIMEOUT=${VLLM_TIMEOUT:-900}            # seconds to wait for the server to answer
PYTHON=${PYTHON:-python}
if [[ $PYTHON == */* && $PYTHON != /* ]]; then PYTHON=$PWD/$PYTHON; fi
export PYTHON
export TRAINER=${TRAINER:-vllm}
use_vllm=(); [[ $TRAINER == vllm ]] || use_vllm=(--use_vllm true)
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}   # GiB of KV cache when vLLM runs on the CPU

if [[ $VLLM_MODE == colocate ]]; then
  exec bash "$REPO/finetune_RL.sh" ${use_vllm[@]+"${use_vllm[@]}"} --vllm_mode colocate --vllm_gpu_memory_utilization "$VLLM_GPU_MEMORY" "$@"
fi
[[ $VLLM_MODE == server ]] || { echo "VLLM_MODE must be colocate or server, got '$VLLM_MODE'" >&2; exit 2; }

ngpu=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
MODEL=${MODEL:-}
if [[ -n $MODEL && $MODEL != /* && -e $PWD/$MODEL ]]; then MODEL=$PWD/$MODEL; fi
MODEL_FOR_SERVER=${MODEL:-$REPO/outputs/tiny-qwen2_5_vl-head64}   # vLLM's CPU attention needs head_dim >= 64
if [[ -z $MODEL ]]; then  # the demo: a small run of the tiny model on the repository's examples
  if [[ ! -f $MODEL_FOR_SERVER/config.json ]]; then
    "$PYTHON" -m vqrl.cli tiny-model --arch qwen2_5_vl --head_dim 64 --out "$MODEL_FOR_SERVER"
  fi
  export OUTPUT=${OUTPUT:-$REPO/outputs/demo-vllm} MAX_STEPS=${MAX_STEPS:-8} NUM_GENERATIONS=${NUM_GENERATIONS:-4}
  export BATCH=${BATCH:-8} MAX_COMPLETION=${MAX_COMPLETION:-48} LR=${LR:-1e-5} SAVE_STEPS=${SAVE_STEPS:-4}
fi
server_gpus=(); train_gpus=()
if [[ $ngpu -gt 0 ]]; then
  (( ngpu > VLLM_GPUS )) || { echo "server mode needs more than VLLM_GPUS=$VLLM_GPUS GPUs (found $ngpu)" >&2; exit 2; }
  server_gpus=(--server_gpus "$(seq -s, 0 $((VLLM_GPUS - 1)))")
  train_gpus=(--train_gpus "$(seq -s, "$VLLM_GPUS" $((ngpu - 1)))")
  export NPROC=$((ngpu - VLLM_GPUS))
fi
if [[ -n ${VLLM_SERVE_CMD:-} ]]; then
  read -r -a serve <<< "$VLLM_SERVE_CMD"   # your own server command, split on spaces
else
  serve=("$PYTHON" -m trl.scripts.vllm_serve --model "$MODEL_FOR_SERVER" --tensor_parallel_size "$VLLM_GPUS"
         --host "$VLLM_HOST" --port "$VLLM_PORT")
fi
exec "$PYTHON" -m vqrl.launch --health_url "http://$VLLM_HOST:$VLLM_PORT/health/" --timeout "$VLLM_TIMEOUT" \
  ${server_gpus[@]+"${server_gpus[@]}"} ${train_gpus[@]+"${train_gpus[@]}"} -- "${serve[@]}" -- \
  env MODEL="$MODEL_FOR_SERVER" bash "$REPO/finetune_RL.sh" ${use_vllm[@]+"${use_vllm[@]}"} --vllm_mode server --vllm_server_host "$VLLM_HOST" \
  --vllm_server_port "$VLLM_PORT" "$@"
