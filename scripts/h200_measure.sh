#!/usr/bin/env bash
# The H200 measurements of docs/perf.md ("vLLM rollouts" and "Speed on one GPU"), in one go, into $1 (default
# outputs/h200): plain TRL and every vqrl trainer on the Qwen2.5-VL-3B shape (one `vqrl bench` invocation), the
# crashed user run of the vLLM issue with video (finetune_RL_vllm.sh, micro-batch 16 x 4 accumulation, examples/),
# then the 7B shape. Run on the GPU machine from the repository root after `source .whl/setup.sh && source
# .whl/setup-vllm.sh`; each part logs to its own file and a failing part does not stop the next.
set -uo pipefail
out=${1:-outputs/h200}
parts=${PARTS:-"bench3b vllm_examples logprob_check bench7b"}
trainers3b=${TRAINERS_3B:-"trl standard vllm refine refine_vllm"}
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
stamp() { echo "[h200_measure] $(date +%T) $*" | tee -a "$out/progress.log"; }
for part in $parts; do
  stamp "start $part"
  case $part in
    bench3b) python3 -m vqrl.cli bench --model qwen2_5_vl_3b --trainers $trainers3b \
               --steps 2 --warmup 2 --workdir /tmp/bw3 --out "$out/bench_3b.json" > "$out/bench_3b.log" 2>&1 ;;
    vllm_examples)
      [[ -f /tmp/bw3/model/config.json ]] || python3 -m vqrl.cli random-model --shape qwen2_5_vl_3b --out /tmp/bw3/model
      MODEL=/tmp/bw3/model NPROC=1 DS_CONFIG=configs/accelerate/zero2.yaml BATCH=16 NUM_GENERATIONS=8 MAX_STEPS=4 \
        MAX_COMPLETION=128 LR=1e-5 SAVE_STEPS=1000 OUTPUT=/tmp/vllm_examples PYTHON=python3 \
        bash finetune_RL_vllm.sh --gradient_accumulation_steps 4 --reward_funcs vqrl.bench:random_reward \
        --max_pixels 200704 --beta 0.04 --save_strategy no > "$out/vllm_examples.log" 2>&1
      rc=$?; cp /tmp/vllm_examples/metrics.jsonl "$out/vllm_examples_metrics.jsonl" 2>/dev/null; (exit $rc) ;;
    logprob_check)  # vLLM's sampling log-probs against the training forward, text / image / video prompts
      python3 scripts/vllm_logprob_check.py --model /tmp/bw3/model --dtype bfloat16 --out "$out/logprob_check_3b.json" \
        > "$out/logprob_check.log" 2>&1 ;;
    bench7b) python3 -m vqrl.cli bench --model qwen2_5_vl_7b --trainers trl standard vllm --vllm_sleep true \
               --vllm_gpu_memory_utilization 0.25 --steps 2 --warmup 2 --workdir /tmp/bw7 \
               --out "$out/bench_7b.json" > "$out/bench_7b.log" 2>&1 ;;
  esac
  stamp "end $part (exit $?)"
done
stamp "all done"
