#!/usr/bin/env bash
# Several configurations of the learning check side by side on one GPU machine, on the same seeds and the same data,
# into $1 (default /tmp/lc_variants): the data once (`--stage data`), then one check per line of VARIANTS
# ("<name> <flags added to CONFIG>") at once, each until DEADLINE (epoch seconds), each exported to
# OUT/<name>_export; "all done" in OUT/progress.log at the end. Run from the repository root after
# `source .whl/setup.sh`. CONFIG: the flags every variant shares (default: the GPU preset, standard trainer, the
# tower of outputs/fp_tower, until DEADLINE; docs/learning.md); EXTRA: flags added to it (e.g. --data_seed 2);
# SEEDS (default "0 1 2"); THREADS per process (default 1: the step is host-bound, and twelve processes of one
# thread fit 16 cores). On the CPU, the code path at toy scale (~3 minutes):
# DEADLINE=$(( $(date +%s) + 900 )) CONFIG="--gpu --smoke --device cpu --trainers standard" VARIANTS=$'a\nb --beta 0.2' \
#   bash scripts/h200_variants.sh /tmp/lcv_smoke
set -uo pipefail
out=${1:-/tmp/lc_variants}
deadline=${DEADLINE:?DEADLINE: epoch seconds by which every variant must be done}
: "${VARIANTS:?VARIANTS: one variant per line, <name> <flags>}"
config=${CONFIG:-"--gpu --trainers standard --vision_init $PWD/outputs/fp_tower --steps 4000 --eval_every 20"}
config="$config ${EXTRA:-}"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$out"
stamp() { echo "[h200_variants] $(date +%T) $*" | tee -a "$out/progress.log"; }
# the data once, from the shared flags (a variant's flags must not change the task: the checks verify it on reuse)
stamp "data"
python3 scripts/learning_check.py $config --stage data --out "$out/data_build" > "$out/data_build.log" 2>&1 \
  || { stamp "data failed (see data_build.log)"; exit 1; }
data="$out/data_build/data"
while read -r name flags; do
  [[ -z $name ]] && continue
  left=$((deadline - $(date +%s)))
  stamp "variant $name ($flags), budget ${left}s"
  python3 scripts/learning_check.py $config $flags --seeds ${SEEDS:-0 1 2} --threads "${THREADS:-1}" \
    --reuse_data "$data" --budget "$left" --out "$out/$name" --export "$out/${name}_export" > "$out/$name.log" 2>&1 &
done <<< "$VARIANTS"
wait
stamp "all done"
