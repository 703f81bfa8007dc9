"""Time transformers' Qwen2.5-VL get_rope_index against vqrl's once-per-prompt wrapper on the CPU, and count the tensor
operations each runs (docs/perf.md, "M-RoPE positions once per prompt"). A tiny random base model; no download."""

from __future__ import annotations

import time

import torch
from transformers import Qwen2_5_VLConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

from vqrl.modeling import rope_once


def batch(prompts: int, group: int, prompt_len: int = 70, completion_len: int = 32, vision_tokens: int = 16):
    """`prompts` x `group` sequences: one 8x8-patch image each (16 merged tokens), completions of 1-32 tokens."""
    n = prompts * group
    ids = torch.full((n, prompt_len + completion_len), 5)
    types = torch.zeros(n, prompt_len + completion_len, dtype=torch.int)
    types[:, 10:10 + vision_tokens] = 1
    mask = torch.ones(n, prompt_len + completion_len, dtype=torch.long)
    for i in range(n):
        mask[i, prompt_len + 1 + (i * 7) % (completion_len - 1):] = 0
    return ids, types, mask, torch.tensor([[1, 8, 8]] * n)


def main() -> None:
    text = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                intermediate_size=64, vocab_size=300, rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]})
    vision = dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=64)
    model = Qwen2_5_VLModel(Qwen2_5_VLConfig(text_config=text, vision_config=vision))
    print("| batch | transformers' get_rope_index | once per prompt |\n|---|---|---|")
    for prompts, group in ((64, 4), (8, 8)):
        ids, types, mask, grid = batch(prompts, group)
        cells = []
        for shared in (False, True):
            if shared:
                rope_once.install(model)
            call = lambda: model.get_rope_index(ids, mm_token_type_ids=types, image_grid_thw=grid,  # noqa: E731
                                                attention_mask=mask)
            call()  # the wrapper's first call also runs the original once, to check itself
            start = time.perf_counter()
            for _ in range(5):
                call()
            ms = (time.perf_counter() - start) / 5 * 1000
            with torch.profiler.profile() as prof:
                call()
            ops = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
            cells.append(f"{ms:.1f} ms, {ops:,} tensor operations")
        del model.get_rope_index
        print(f"| {prompts} prompts x {group} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
