"""fidelity_rank under torch.distributed: two gloo processes, each holding an uneven slice that cuts a group in two,
must each get exactly their slice of the single-process rewards over the whole batch; the one-image warning looks at
the whole batch too (one image per process is two images: no warning; one image cut in two: a warning on each)."""

from __future__ import annotations

import json
import logging
import socket
from datetime import timedelta

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from vqrl.rewards import REWARDS, ranking

SCORES = [3.5, 3.9, None, 4.2, 2.0, 2.5, 2.25, None, 4.0, 4.0, 3.0, 3.75]
MOS = [4.1] * 4 + [2.3] * 4 + [3.6] * 4
IDS = [f"img{i // 4}" for i in range(12)]
COMPLETIONS = [
    "<think>t</think><answer>unsure</answer>" if s is None else f"<think>t</think><answer>Score: {s:.2f}</answer>"
    for s in SCORES
]
SPLITS = {"5/7": [(0, 5), (5, 12)], "9/3": [(0, 9), (9, 12)], "0/12": [(0, 0), (0, 12)]}


def ranked(lo, hi, by):
    """fidelity_rank on completions[lo:hi], grouped by num_generations or by sample_id."""
    group = {"num_generations": 4} if by == "num_generations" else {"sample_id": IDS[lo:hi]}
    return REWARDS["fidelity_rank"](COMPLETIONS[lo:hi], solution=MOS[lo:hi], log_metric=lambda name, value: None,
                                    prompts=["p"] * (hi - lo), trainer_state=None, **group)


def worker(rank, world_size, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=60))
    try:
        results = {}
        for split, slices in SPLITS.items():
            lo, hi = slices[rank]
            for by in ("num_generations", "sample_id"):
                results[f"{split}/{by}"] = ranked(lo, hi, by)
        warnings = []
        handler = logging.Handler()
        handler.emit = lambda record: warnings.append(record.getMessage())
        logging.getLogger("vqrl.rewards.ranking").addHandler(handler)
        for generations, (lo, hi) in ((4, (4 * rank, 4 * rank + 4)), (8, (4 * rank, 4 * rank + 4))):
            ranking._warned_single_image = False
            REWARDS["fidelity_rank"](COMPLETIONS[lo:hi], solution=[MOS[0]] * 4, num_generations=generations)
            results[f"warned/{generations}"] = [w.split(":")[0] for w in warnings]
            warnings.clear()
        with open(f"{out_dir}/{rank}.json", "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path):
    whole = ranked(0, 12, "num_generations")
    assert ranked(0, 12, "sample_id") == whole
    assert ranked(0, 5, "sample_id") != whole[:5]  # the local slice alone would give other rewards

    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)

    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    for rank in range(2):
        assert results[rank]["warned/4"] == []  # an image on each process: two images to rank
        assert results[rank]["warned/8"] == ["fidelity_rank"]  # one image of 8 completions, cut in two
    for split, slices in SPLITS.items():
        for by in ("num_generations", "sample_id"):
            for rank, (lo, hi) in enumerate(slices):
                assert results[rank][f"{split}/{by}"] == pytest.approx(whole[lo:hi], abs=1e-12), (split, by, rank)
