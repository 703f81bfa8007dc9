"""M-RoPE positions computed once per prompt: the G sequences of a prompt share their positions up to the end of
their last image or video and differ only in the length of their trailing text (the completion).

Qwen-VL's `get_rope_index` walks the batch row by row in Python, about 160 tensor operations per row (on a GPU:
launches and host syncs), in every forward that starts a sequence: generation's prefill and each log-prob pass. For
a small model that is a large share of the step (docs/learning.md). This per-instance wrapper calls transformers'
own `get_rope_index` on one row per group, the one with the longest trailing text, and gives every other row of the
group the first n of those positions. Why that is exact: a row's positions depend only on the modality types of its
attended tokens and the grids it consumes, read left to right, and a text run counts up from where it starts; a row
whose attended types are a prefix of another's gets a prefix of its positions. The first call that saves anything
is checked against the original on the whole batch; a difference is an error naming transformers' version.
"""

from __future__ import annotations

import logging

import torch
import transformers

from .vision_once import SUPPORTED

logger = logging.getLogger(__name__)

TEXT = 0


def _runs(types: list[int], value: int) -> int:
    """How many runs of `value` the type sequence holds (each run consumes one grid)."""
    return sum(1 for i, t in enumerate(types) if t == value and (i == 0 or types[i - 1] != value))


def _host(values) -> list:
    """A grid tensor or per-video list as a host list, read once (one device sync, not one per row)."""
    if values is None:
        return []
    return values.detach().cpu().tolist() if torch.is_tensor(values) else [float(v) for v in values]


def plan(mm_token_type_ids, attention_mask, image_grid_thw, video_grid_thw, second_per_grid_ts=None):
    """(representative row of each row, sorted representatives, the representatives' image grid rows, their video
    grid rows, which also index second_per_grid_ts) or None where nothing would be saved or the batch is not of the
    expected form (a row with nothing attended; grids that do not match the runs, e.g. Qwen3-VL's per-frame video
    runs)."""
    types = mm_token_type_ids.detach().cpu()
    mask = (attention_mask.detach().cpu().bool() if attention_mask is not None
            else torch.ones(types.shape, dtype=torch.bool))
    images, videos, seconds = _host(image_grid_thw), _host(video_grid_thw), _host(second_per_grid_ts)
    groups: dict[tuple, list[int]] = {}
    tails, spans, image_at, video_at = [], [], 0, 0
    for b in range(types.shape[0]):
        seq = types[b][mask[b]].tolist()
        if not seq:
            return None
        last = max((i for i, t in enumerate(seq) if t != TEXT), default=-1)
        prefix = tuple(seq[:last + 1])
        n_image, n_video = _runs(seq, 1), _runs(seq, 2)
        key = (prefix, tuple(map(tuple, images[image_at:image_at + n_image])),
               tuple(map(tuple, videos[video_at:video_at + n_video])), tuple(seconds[video_at:video_at + n_video]))
        spans.append((image_at, n_image, video_at, n_video))
        image_at, video_at = image_at + n_image, video_at + n_video
        groups.setdefault(key, []).append(b)
        tails.append(len(seq) - last - 1)
    if image_at != len(images) or video_at != len(videos):
        return None
    if len(groups) == types.shape[0]:
        return None
    rep_of = [0] * types.shape[0]
    for members in groups.values():
        rep = max(members, key=lambda b: (tails[b], -b))  # the longest trailing text (the first of equals)
        for b in members:
            rep_of[b] = rep
    reps = sorted(set(rep_of))
    image_rows = [i for r in reps for i in range(spans[r][0], spans[r][0] + spans[r][1])]
    video_rows = [i for r in reps for i in range(spans[r][2], spans[r][2] + spans[r][3])]
    return rep_of, reps, image_rows, video_rows


def expand(positions: torch.Tensor, rep_mask: torch.Tensor, rep_index: torch.Tensor, mask: torch.Tensor,
           delta_dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's positions from its representative's: the representative's attended positions in order, the
    first n of them at the row's n attended tokens, 0 elsewhere (as get_rope_index leaves them); and the row's
    delta as get_rope_index computes it (largest position + 1 - attended tokens)."""
    order = torch.sort((~rep_mask).to(torch.int8), dim=-1, stable=True).indices  # attended first, in order
    compact = positions.gather(2, order.unsqueeze(0).expand(positions.shape[0], -1, -1))[:, rep_index]
    rank = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out = compact.gather(2, rank.unsqueeze(0).expand(positions.shape[0], -1, -1)) * mask
    lowest = torch.iinfo(out.dtype).min if not out.dtype.is_floating_point else float("-inf")
    largest = out.masked_fill(~mask.unsqueeze(0), lowest).amax(dim=(0, 2))
    delta = (largest + 1 - mask.sum(-1)).to(delta_dtype).unsqueeze(1)
    return out, delta


def install(base) -> bool:
    """Wrap `base.get_rope_index` (a Qwen-VL base model instance) once; False where the class is not supported."""
    if type(base).__name__ not in SUPPORTED or "get_rope_index" in vars(base):
        return False
    original = base.get_rope_index
    checked = {"done": False}

    def get_rope_index(input_ids, mm_token_type_ids=None, image_grid_thw=None, video_grid_thw=None,
                       attention_mask=None, **kwargs):
        def full():
            return original(input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw,
                            video_grid_thw=video_grid_thw, attention_mask=attention_mask, **kwargs)

        if mm_token_type_ids is None:
            return full()
        seconds = kwargs.get("second_per_grid_ts")
        found = plan(mm_token_type_ids, attention_mask, image_grid_thw, video_grid_thw, seconds)
        if found is None:
            return full()
        rep_of, reps, image_rows, video_rows = found
        device = input_ids.device
        mask = (attention_mask.bool() if attention_mask is not None
                else torch.ones(input_ids.shape, dtype=torch.bool, device=device))
        pick = torch.tensor(reps, device=device)
        sub = dict(kwargs)
        if seconds is not None:
            sub["second_per_grid_ts"] = seconds[torch.tensor(video_rows, dtype=torch.long)] \
                if torch.is_tensor(seconds) else [seconds[i] for i in video_rows]
        positions, deltas = original(
            input_ids[pick], mm_token_type_ids=mm_token_type_ids[pick],
            image_grid_thw=image_grid_thw[torch.tensor(image_rows, dtype=torch.long, device=image_grid_thw.device)]
            if image_rows else None,
            video_grid_thw=video_grid_thw[torch.tensor(video_rows, dtype=torch.long, device=video_grid_thw.device)]
            if video_rows else None,
            attention_mask=attention_mask[pick] if attention_mask is not None else None, **sub)
        slot = {r: i for i, r in enumerate(reps)}
        index = torch.tensor([slot[r] for r in rep_of], device=device)
        out, delta = expand(positions, mask[pick], index, mask, deltas.dtype)
        if not checked["done"]:
            reference, reference_deltas = full()
            if not (torch.equal(out, reference) and torch.equal(delta.to(reference_deltas.device), reference_deltas)):
                raise RuntimeError(
                    f"vqrl.modeling.rope_once: positions shared per prompt differ from transformers "
                    f"{transformers.__version__}'s {type(base).__name__}.get_rope_index on the same batch; this "
                    f"transformers is not the one vqrl was tested with (--vision_once false turns sharing off)")
            checked["done"] = True
            logger.info("M-RoPE positions computed once per prompt (%d of %d rows), checked against %s's own",
                        len(reps), len(rep_of), type(base).__name__)
        return out, delta

    base.get_rope_index = get_rope_index
    return True
