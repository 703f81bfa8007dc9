#!/usr/bin/env bash
# Several lm_probe.py runs at once on one GPU machine (each process 2 CPU threads, all on the one GPU; the tiny
# model's SFT step is host-bound, so they barely slow each other), into $1 (default /tmp/lm_sweep). Each line of
# RUNS is "<name> <data folder suffix> <lm_probe flags...>"; the data folders are built first, in parallel.
# Run from the repository root after `source .whl/setup.sh`; LIMIT (seconds) caps every run; DEVICE=cpu for a smoke.
set -uo pipefail
out=${1:-/tmp/lm_sweep}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$out"
stamp() { echo "[lm_sweep] $(date +%T) $*" | tee -a "$out/progress.log"; }
: "${RUNS:?RUNS: one run per line}"
# data first: one build per distinct "<suffix>", from the run's --train_sources / --size / --data_seed (built from a
# bare interpreter: the generator's spawned workers re-import the calling script, and lm_probe.py imports TRL)
build='import argparse, sys
from vqrl.learning.task import TaskSpec, build_or_load_task
p = argparse.ArgumentParser()
p.add_argument("--train_sources", type=int, default=1000)
p.add_argument("--size", type=int, default=112)
p.add_argument("--data_seed", type=int, default=0)
a, _ = p.parse_known_args(sys.argv[2:])
build_or_load_task(TaskSpec(train_sources=a.train_sources, size=a.size, seed=a.data_seed), sys.argv[1], workers=6)'
declare -A built
while read -r name suffix flags; do
  [[ -z $name || -n ${built[$suffix]:-} ]] && continue
  built[$suffix]=1
  stamp "data $suffix"
  python3 -c "$build" "$out/data_$suffix" $flags > "$out/data_$suffix.log" 2>&1 &
done <<< "$RUNS"
wait
stamp "data done"
while read -r name suffix flags; do
  [[ -z $name ]] && continue
  stamp "run $name: $flags"
  timeout "${LIMIT:-540}" python3 docs/learning/lm_probe.py --data "$out/data_$suffix" --device "${DEVICE:-cuda}" \
    --threads 2 $flags --out "$out/$name.json" > "$out/$name.log" 2>&1 &
done <<< "$RUNS"
wait
stamp "all done"
