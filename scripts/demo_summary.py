#!/usr/bin/env python
"""What `make demo` shows at its end: did the run learn (reward at the start against the end, non-zero gradients),
and how the trained model scores the held-out examples. Reads <run>/metrics.jsonl and <run>/eval/metrics.json only."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summary(run: Path, window: int = 5) -> str:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "reward" in r]
    if not steps:
        return f"{run}: no training step logged"
    first, last = steps[:window], steps[-window:]

    def mean(rs, key):
        values = [r[key] for r in rs if key in r]
        return sum(values) / len(values) if values else float("nan")

    keys = ["reward"] + sorted({k for r in steps for k in r if k.startswith("rewards/") and k.endswith("/mean")})
    lines = [f"{len(steps)} GRPO steps in {run}"]
    for key in keys:
        name = key.split("/")[1] if "/" in key else key
        lines.append(f"  {name:<10} steps 1-{len(first)}: {mean(first, key):.3f}   last {len(last)}: "
                     f"{mean(last, key):.3f}")
    moving = sum(1 for r in steps if r.get("grad_norm", 0) > 0)
    lines.append(f"  grad norm > 0 in {moving} of {len(steps)} steps (mean {mean(steps, 'grad_norm'):.3f}): "
                 f"the weights {'changed' if moving else 'did NOT change'}")
    metrics = run / "eval" / "metrics.json"
    if metrics.exists():
        per_dataset = json.loads(metrics.read_text())
        overall = per_dataset.get("overall") or next(iter(per_dataset.values()), {})
        shown = ", ".join(f"{k} {overall[k]:.3f}" for k in ("srcc", "plcc", "parse_fail_rate")
                          if isinstance(overall.get(k), (int, float)))
        lines.append(f"held-out examples ({overall.get('n', '?')}): {shown}  (details: {metrics})")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/demo")))
