#!/usr/bin/env bash
# The learning check (docs/learning.md) on one H200 in one go, into $1 (default /tmp/lc_h200): first the GRPO step
# time of its tower-trainable configuration at several prompts per step (one process alone, CAL_STEPS steps each),
# then three seeds on the GPU preset's data at the prompts per step that scores the most prompts per second (a
# larger batch must buy >= 25 % more prompts per second than the smaller one it replaces, since it makes fewer
# updates), the learning rate scaled by the square root of the batch ratio, until DEADLINE (epoch seconds).
# Run from the repository root after `source .whl/setup.sh`. EXTRA adds flags to every check (e.g. on the CPU:
# EXTRA="--smoke --device cpu --threads 1" CAL_PROMPTS="2 4"). TOWER: the vision tower's flags (default: trained by
# GRPO; TOWER="" keeps it frozen, e.g. with EXTRA="--vision_init DIR", a tower trained by feature_probe.py --save).
set -uo pipefail
out=${1:-/tmp/lc_h200}
deadline=${DEADLINE:?DEADLINE: epoch seconds by which the chain must be done}
cal=${CAL_PROMPTS:-"64 128 256"}
extra=${EXTRA:-}
config="--gpu --trainers standard --vision_hidden_size 64 --vision_depth 4 ${TOWER---grpo_arg freeze_vision_tower=false}"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$out"
stamp() { echo "[h200_learning] $(date +%T) $*" | tee -a "$out/progress.log"; }
reuse=""; data=""
for p in $cal; do
  stamp "calibrate $p prompts per step"
  python3 scripts/learning_check.py $config --seeds 0 --parallel 0 --threads "${CAL_THREADS:-8}" \
    --prompts_per_step "$p" --steps "${CAL_STEPS:-12}" --eval_every 1000 --no_final_eval --profile_step 6 $reuse $extra \
    --out "$out/cal_$p" > "$out/cal_$p.log" 2>&1 || stamp "calibration at $p failed (see cal_$p.log)"
  # the first calibration's data and warm-up serve the others (the seeds below warm up each on its own)
  [[ -z $reuse && -d $out/cal_$p/seed0/sft ]] && reuse="--reuse_data $out/cal_$p/data --warm_start $out/cal_$p/seed0/sft" \
    && data="--reuse_data $out/cal_$p/data"
done
# the choice, from each calibration's run.json (median step and between-step seconds after the first step)
read -r prompts lr < <(python3 - "$out" $cal <<'EOF'
import json, math, sys
from pathlib import Path
out, sizes = Path(sys.argv[1]), [int(s) for s in sys.argv[2:]]
rows = {}
for p in sizes:
    f = out / f"cal_{p}" / "seed0" / "standard" / "run.json"
    if f.exists():
        t = json.loads(f.read_text())["step_seconds_median"]
        rows[p] = {"step_s": t.get("step"), "between_s": t.get("between", 0.0), **t}
        rows[p]["prompts_per_s"] = p / (t["step"] + t.get("between", 0.0)) if t.get("step") else None
best = None
for p in sorted(rows):
    if rows[p]["prompts_per_s"] and (best is None or rows[p]["prompts_per_s"] >= 1.25 * rows[best]["prompts_per_s"]):
        best = p
best = best or sizes[0]
lr = 1e-3 * math.sqrt(best / 64)
(out / "calibration.json").write_text(json.dumps({"rows": rows, "chosen": best, "lr": lr}, indent=1))
print(best, lr)
EOF
)
[[ -n ${prompts:-} ]] || { prompts=64; lr=1e-3; }
left=$((deadline - $(date +%s)))
stamp "seeds: $prompts prompts per step, lr $lr, budget ${left}s"
(( left > 240 )) || { stamp "too little time left for the seeds"; exit 1; }
python3 scripts/learning_check.py $config --seeds 0 1 2 --prompts_per_step "$prompts" --lr "$lr" --steps 4000 \
  --eval_every "${EVAL_EVERY:-20}" --budget "$left" --threads 4 ${data:-} $extra --out "$out/seeds" \
  --export "$out/seeds_export" > "$out/seeds.log" 2>&1
stamp "seeds done (exit $?)"
stamp "all done"
