"""Encode each distinct image or video once per log-prob forward: the G sequences of a prompt share its encoding.

A per-call wrapper of the Qwen-VL base model's `get_image_features` / `get_video_features`; no model code copied,
and the vision tower is called exactly as many times per forward as without it (ZeRO-3 keeps its call counts).
The trainers' log-prob passes, the Refine trainer's PD passes and evaluation use it; it imports neither of them.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from . import vision as V

# Base models whose forward is known to consume only `pooler_output` (and Qwen3-VL's `deepstack_features`) of
# get_*_features, with grids used unchanged for the M-RoPE positions. Others fall back to one encoding per sequence.
SUPPORTED = ("Qwen2VLModel", "Qwen2_5_VLModel", "Qwen3VLModel")

# (per-sample pixel key, per-sample grid key, base-model method) of each modality
MODALITIES = (("pixel_values", "image_grid_thw", "get_image_features"),
              ("pixel_values_videos", "video_grid_thw", "get_video_features"))


def base_model(model):
    """The module whose forward calls get_*_features (e.g. Qwen2_5_VLModel), through any wrapper (PEFT, DDP,
    DeepSpeed, functools.partial); None when the architecture is not supported."""
    model = getattr(model, "func", model)
    for module in model.modules():
        if type(module).__name__ in SUPPORTED:
            return module
    return None


def distinct(samples: list[dict]) -> tuple[list[dict], list[int]]:
    """Distinct per-sample vision dicts and each sample's index among them. Identity is the key: the trainer
    encodes a record once per generation batch and its G sequences carry that same dict object."""
    index, out, inverse = {}, [], []
    for s in samples:
        if id(s) not in index:
            index[id(s)] = len(out)
            out.append(s)
        inverse.append(index[id(s)])
    return out, inverse


def _count(s: dict, grid_key: str) -> int:
    grid = s.get(grid_key)
    return 0 if grid is None else int(grid.shape[0])


def tower_rows(samples: list[dict], once: bool) -> int:
    """Pixel rows (patches) the vision tower encodes for these samples' media: the distinct samples' with
    vision-once, every sample's without. Sizes the activations the tower keeps for its backward."""
    chosen = distinct(samples)[0] if once else samples
    return sum(int(s[key].shape[0]) for s in chosen if s for key, _, _ in MODALITIES if s.get(key) is not None)


def expansion(uniq: list[dict], inverse: list[int], grid_key: str) -> list[int]:
    """For each image (or video) of the chunk, in the order the sequences carry them, its index among the
    distinct samples' images."""
    offsets, total = [], 0
    for s in uniq:
        offsets.append(total)
        total += _count(s, grid_key)
    return [offsets[u] + j for u in inverse for j in range(_count(uniq[u], grid_key))]


def model_kwargs(samples: list[dict], device) -> tuple[dict, dict[str, tuple]]:
    """The chunk's vision kwargs with pixels of the distinct samples only (grids stay per sequence, as the M-RoPE
    positions need them), and per get_*_features method: (grid kwarg name, the distinct media's grids, the map from
    the sequences' media to the distinct media)."""
    uniq, inverse = distinct(samples)
    pixel_keys = {pixel_key for pixel_key, _, _ in MODALITIES}
    extra = V.collate([{k: v for k, v in s.items() if k not in pixel_keys} for s in samples], device=device)
    own = V.collate(uniq, device=device)
    maps = {}
    for pixel_key, grid_key, method in MODALITIES:
        if pixel_key in own:
            extra[pixel_key] = own[pixel_key]
            maps[method] = (grid_key, own[grid_key], expansion(uniq, inverse, grid_key))
    return extra, maps


def _expand(output, index: list[int]):
    """Replace the per-medium features of the distinct media by those of every sequence's media. Indexing keeps
    the graph, so a shared encoding gets the sum of its sequences' gradients."""
    pooled = list(output.pooler_output)
    sizes = [p.shape[0] for p in pooled]
    output.pooler_output = tuple(pooled[j] for j in index)
    deepstack = getattr(output, "deepstack_features", None)
    if deepstack is not None:  # Qwen3-VL: per layer, one row per merged token of all media, concatenated
        starts = torch.tensor([0, *sizes]).cumsum(0).tolist()
        rows = torch.cat([torch.arange(starts[j], starts[j] + sizes[j]) for j in index]) if index else \
            torch.zeros(0, dtype=torch.long)
        output.deepstack_features = [f.index_select(0, rows.to(f.device)) for f in deepstack]
    return output


@contextmanager
def encode_once(base, maps: dict[str, tuple]):
    """While active, base.get_image_features / get_video_features encode the pixels they are given (the distinct
    media) with the distinct media's grids, and return features expanded to the sequences' media. Nested calls
    (Qwen3-VL's video method calls its image method) pass straight through."""
    state = {"inside": False}

    def wrap(method: str, grid_key: str, grid: torch.Tensor, index: list[int]):
        original = getattr(type(base), method).__get__(base)

        def features(pixels, *args, **kwargs):
            if state["inside"]:
                return original(pixels, *args, **kwargs)
            kwargs.pop(grid_key, None)  # the sequences' grids (positional or named): replaced by the distinct ones
            kwargs["return_dict"] = True
            if pixels.shape[0] != int(grid.prod(-1).sum()):
                raise RuntimeError(f"{method}: {pixels.shape[0]} pixel rows for grids of {int(grid.prod(-1).sum())}")
            state["inside"] = True
            try:
                output = original(pixels, grid, **kwargs)
            finally:
                state["inside"] = False
            return _expand(output, index)

        return features

    for method, (grid_key, grid, index) in maps.items():
        setattr(base, method, wrap(method, grid_key, grid, index))
    try:
        yield
    finally:
        for method in maps:
            base.__dict__.pop(method, None)


def shuffle_by_group(seq_dict: dict) -> dict:
    """trl's shuffle_sequence_dict, moving runs of sequences that share one vision dict (a prompt's G completions)
    together, so micro-batches hold whole groups. It draws the same torch.randperm as TRL (the RNG stream after it
    is unchanged) and orders the groups by where their first member lands in that permutation."""
    n = len(next(v for v in seq_dict.values() if v is not None))
    perm = torch.randperm(n)
    vision = seq_dict.get("vision")
    if isinstance(vision, list) and len(vision) == n:
        group = torch.tensor([0] + [int(vision[i] is not vision[i - 1]) for i in range(1, n)]).cumsum(0)
        rank = torch.empty(n, dtype=torch.long)
        rank[perm] = torch.arange(n)
        first = torch.full((int(group[-1]) + 1,), n, dtype=torch.long).scatter_reduce(0, group, rank, "amin")
        perm = torch.argsort(first[group] * n + torch.arange(n))  # groups in order of first landing, members in order

    def permute(v):
        if v is None or (isinstance(v, torch.Tensor) and v.ndim == 0):
            return v
        if isinstance(v, torch.Tensor):
            return v[perm]
        return [v[i] for i in perm]

    return {key: permute(val) for key, val in seq_dict.items()}
