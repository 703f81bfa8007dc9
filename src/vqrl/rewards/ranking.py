"""VisualQuality-R1's fidelity ranking reward: each score compared, in probability, with every other image's.

It must see the whole generation batch: gather across ranks, then group; never use the local slice silently.
"""

from __future__ import annotations

import logging
import math
import sys

from ..data.records import to_float
from .parsing import column, completion_text, parse_score

logger = logging.getLogger(__name__)
_warned_single_image = False  # warn once per process: a recipe that holds one image per step stays that way

# ε keeps the denominator sqrt(σ_i² + σ_z² + ε) positive when both groups answered one score each (σ = 0): the
# comparison then becomes an almost hard step, p ≈ Φ(±(x − μ_z) / 0.001).
DEFAULT_EPS = 1e-6


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def group_index(n: int, sample_ids: list, num_generations=None) -> list[int]:
    """Group number of each of n completions: blocks of num_generations, else runs of equal sample_id.

    num_generations (int, or a list of that int per completion) is what the trainer knows; sample_id runs are
    the fallback (two adjacent copies of one record would merge, so prefer num_generations).
    """
    num_generations = _one_generations([num_generations])
    if num_generations is not None:
        if n % num_generations:
            raise ValueError(f"fidelity_rank: the batch of {n} completions is not whole groups of {num_generations}")
        return [i // num_generations for i in range(n)]
    if any(key is None for key in sample_ids):
        raise ValueError(
            "fidelity_rank needs to know which completions share an image: pass num_generations (the trainer "
            "does) or a `sample_id` column with a value on every row"
        )
    groups, current = [], -1
    for i, key in enumerate(sample_ids):
        current += 1 if i == 0 or key != sample_ids[i - 1] else 0
        groups.append(current)
    return groups


def _one_generations(values: list) -> int | None:
    """The single num_generations among values (each None, an int, or a list of ints); ValueError if several."""
    flat = []
    for value in values:
        flat.extend(value if isinstance(value, (list, tuple)) else [value])
    distinct = {value for value in flat if value is not None}
    bad = [v for v in distinct if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad or len(distinct) > 1:
        raise ValueError(f"fidelity_rank: num_generations must be one positive int, got {sorted(map(repr, distinct))}")
    return distinct.pop() if distinct else None


def fidelity_rewards(scores: list, mos: list, groups: list[int], eps: float = DEFAULT_EPS) -> list[float]:
    """The reward of every completion of a whole batch (pure; no gathering).

    scores: parsed score or None per completion; mos: the image's MOS or None; groups: group number per
    completion. Unparseable completions get 0 and are left out of their group's mean and variance (unbiased,
    ddof=1; 0 with fewer than 2 scores); a group without any score or MOS is no comparison partner; a
    completion with no partner at all (a one-image batch) gets 0.
    """
    members: dict[int, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    stats = {}  # group -> (mean, variance, MOS) for groups that can be compared
    for group, rows in members.items():
        values = [scores[i] for i in rows if scores[i] is not None]
        truth = next((mos[i] for i in rows if mos[i] is not None), None)
        if not values or truth is None:
            continue
        mean = math.fsum(values) / len(values)
        var = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        stats[group] = (mean, var, truth)
    rewards = []
    for i, x in enumerate(scores):
        own = stats.get(groups[i])
        partners = [stat for group, stat in stats.items() if group != groups[i]]
        if x is None or own is None or not partners:
            rewards.append(0.0)
            continue
        total = 0.0
        for mean_z, var_z, truth_z in partners:
            p = _phi((x - mean_z) / math.sqrt(own[1] + var_z + eps))
            g = 1.0 if own[2] > truth_z else 0.0 if own[2] < truth_z else 0.5
            total += math.sqrt(p * g) + math.sqrt((1.0 - p) * (1.0 - g))
        reward = total / len(partners)
        rewards.append(min(1.0, max(0.0, reward)) if math.isfinite(reward) else 0.0)
    return rewards


def _all_gather(obj) -> tuple[list, int]:
    """Every rank's obj in rank order, and this rank; ([obj], 0) outside a multi-process torch.distributed run.

    torch is not imported here: a process group can only exist if torch.distributed was imported already.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return [obj], 0
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered, dist.get_rank()


def _warn_single_image(processes: int) -> None:
    global _warned_single_image
    if not _warned_single_image:
        _warned_single_image = True
        logger.warning(
            "fidelity_rank: this step holds a single image over all %d process(es), so every reward is 0 (nothing to "
            "rank against); hold several images per step: per_device_train_batch_size x steps_per_generation x "
            "processes >= 2 x num_generations", processes)


def fidelity_rank(completions, kwargs: dict, fidelity_eps: float = DEFAULT_EPS):
    """Batch reward: (rewards of this rank's completions, parse failures) after gathering the whole batch."""
    n = len(completions)
    scores = [parse_score(completion_text(c)) for c in completions]
    mos = [to_float(value) for value in column(kwargs, "solution", n)]
    local = {"scores": scores, "mos": mos, "ids": column(kwargs, "sample_id", n),
             "num_generations": kwargs.get("num_generations")}
    parts, rank = _all_gather(local)
    offset = sum(len(part["scores"]) for part in parts[:rank])
    every = [value for part in parts for value in part["scores"]]
    # Checked after the gather, so that every rank raises alike instead of one rank leaving the others waiting.
    generations = _one_generations([part["num_generations"] for part in parts])
    groups = group_index(len(every), [key for part in parts for key in part["ids"]], generations)
    if every and len(set(groups)) == 1:
        _warn_single_image(len(parts))
    rewards = fidelity_rewards(every, [m for part in parts for m in part["mos"]], groups, fidelity_eps)
    fails = [None if m is None else s is None for s, m in zip(scores, mos)]
    return rewards[offset:offset + n], fails
