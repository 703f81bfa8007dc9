"""Diagnostics of the learning check: does the loss score the distribution that generation sampled from, and how
far does each optimizer step move each part of the model?

Per GRPO step `SamplingProbe` logs, as TRL metrics, the largest gap between a sampled token's log-probability under
the distribution `generate` sampled it from (its processed scores: temperature, suppressed tokens) and under the
policy the loss scores, and the largest per-token KL estimate (TRL's k3) with the log-probabilities behind it;
`UpdateProbe` logs each parameter group's update in units of the learning rate; the completions' shapes
(`completion_shapes`: is the thought still the warm-up's, are the tags closed, examples of the ones that are not) go
to `completions_probe.jsonl`, so a format break shows which part of the template changed. All observe only: they must
not change what is sampled, scored or trained.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import TrainerCallback

from .warmup import THINK_TEXT, written_thought

PROBE_FILE = "stability_probe.jsonl"
UPDATE_FILE = "update_probe.jsonl"
COMPLETIONS_FILE = "completions_probe.jsonl"
# (group, substring of the parameter name), first match wins: the merger before the rest of the vision tower
PARAM_GROUPS = (("merger", "visual.merger."), ("vision_tower", "visual."), ("embeddings", "embed_tokens"),
                ("lm_head", "lm_head"), ("lm_layers", ".layers."))


class SamplingProbe:
    """Mixin for a vqrl trainer (put it first in the bases). Works for HF-generate rollouts; with none captured
    (vLLM) it logs nothing."""

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        model = self.model
        captured = []

        @functools.wraps(model.generate)
        def generate(*args, **kwargs):
            out = type(model).generate(model, *args, **kwargs, output_scores=True, return_dict_in_generate=True)
            start = out.sequences.size(1) - len(out.scores)
            steps = [torch.log_softmax(s.float(), -1).gather(1, out.sequences[:, start + t, None])
                     for t, s in enumerate(out.scores)]
            captured.append(torch.cat(steps, 1) if steps else out.sequences.new_zeros((out.sequences.size(0), 0)))
            return out.sequences

        model.generate = generate
        try:
            result = super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                   has_tool_images)
        finally:
            del model.generate
        self._probe_sampled = captured[0] if len(captured) == 1 else None
        return result

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self._probe_completions(output)
        sampled = getattr(self, "_probe_sampled", None)
        ids = output["completion_ids"]
        if sampled is not None and sampled.size(0) == ids.size(0) and sampled.size(1) >= ids.size(1):
            output["probe_sampled_logps"] = sampled[:, :ids.size(1)].to(ids.device)
        self._probe_sampled = None
        return output

    def _get_per_token_logps_and_entropies(self, model, *args, compute_entropy=False, **kwargs):
        out = super()._get_per_token_logps_and_entropies(model, *args, compute_entropy=compute_entropy, **kwargs)
        if compute_entropy and torch.is_grad_enabled():  # the loss pass (the ref pass asks for no entropy)
            self._probe_scored = out[0].detach()
        return out

    def _compute_loss(self, model, inputs):
        self._probe_scored = None
        loss = super()._compute_loss(model, inputs)
        scored, sampled = self._probe_scored, inputs.get("probe_sampled_logps")
        if scored is not None and sampled is not None and self.model.training:
            self._probe_record(scored, sampled, inputs)
        return loss

    def _probe_record(self, scored, sampled, inputs) -> None:
        mask = inputs["completion_mask"].bool()
        if not mask.any():
            return
        gap = (sampled - scored).masked_fill(~mask, 0.0)
        # the signed maximum shows a token scored below its sampling (the suppressed-token runaway); the absolute one
        # shows disagreement in either direction
        row = {"step": self.state.global_step + 1, "sampled_minus_scored_max": float(gap.max()),
               "sampled_scored_abs_max": float(gap.abs().max()),
               "scored_logp_min": float(scored.masked_fill(~mask, 0.0).min())}
        ref = inputs.get("ref_per_token_logps")
        if ref is not None:
            d = ref - scored
            k3 = (torch.exp(d) - d - 1).masked_fill(~mask, -1.0)
            i, j = divmod(int(k3.argmax()), k3.size(1))
            row.update({"kl_token_max": float(k3[i, j]), "at_sampled": float(sampled[i, j]),
                        "at_scored": float(scored[i, j]), "at_ref": float(ref[i, j]),
                        "at_token": self._tokenizer.decode([int(inputs["completion_ids"][i, j])])})
        for key in ("sampled_minus_scored_max", "sampled_scored_abs_max", "scored_logp_min", "kl_token_max"):
            if key in row:
                self._metrics["train"][f"probe/{key}"].append(row[key])
        if self.accelerator.is_main_process:
            with open(Path(self.args.output_dir) / PROBE_FILE, "a") as f:
                f.write(json.dumps(row) + "\n")


    def _probe_completions(self, output) -> None:
        ids, mask = output["completion_ids"], output["completion_mask"].bool()
        texts = self._tokenizer.batch_decode([row[m].tolist() for row, m in zip(ids, mask)])
        row = {"step": self.state.global_step + 1, **completion_shapes(texts)}
        for key in ("think_template", "think_closed", "answer_closed"):
            self._metrics["train"][f"probe/{key}"].append(row[key])
        if self.accelerator.is_main_process:
            with open(Path(self.args.output_dir) / COMPLETIONS_FILE, "a") as f:
                f.write(json.dumps(row) + "\n")


def completion_shapes(texts: list[str], template: str = THINK_TEXT, top: int = 3, examples: int = 2) -> dict:
    """Shares of completions whose thought is `template`, whose `</think>` and `</answer>` are written, the most
    common other thoughts (an unclosed one as "[unclosed] " and all it wrote after `<think>`), and the first
    `examples` completions that do not close their answer, as sampled (special tokens kept)."""
    n = max(1, len(texts))
    thoughts = []
    for text in texts:
        thought = written_thought(text)
        thoughts.append(thought if thought is not None else "[unclosed] " + text.split("<think>", 1)[-1])
    others = Counter(t for t in thoughts if t != template)
    failing = [t for t in texts if "</answer>" not in t]
    return {"n": len(texts), "think_template": sum(t == template for t in thoughts) / n,
            "think_closed": sum("</think>" in t for t in texts) / n, "answer_closed": 1 - len(failing) / n,
            "distinct_thoughts": len(set(thoughts)), "top_other_thoughts": others.most_common(top),
            "unclosed_examples": failing[:examples]}


def probed(trainer_cls):
    """`trainer_cls` with the probe mixed in."""
    return type(f"Probed{trainer_cls.__name__}", (SamplingProbe, trainer_cls), {})


@contextmanager
def probing():
    """While active, vqrl.grpo.build_trainer builds probed trainers. (A narrow patch of our own module's lookup;
    vqrl.grpo offers no trainer-class argument.)"""
    from .. import grpo

    original = grpo.get_trainer
    grpo.get_trainer = lambda name: probed(original(name))
    try:
        yield
    finally:
        grpo.get_trainer = original


def param_group(name: str) -> str:
    return next((group for group, part in PARAM_GROUPS if part in name), "other")


class UpdateProbe(TrainerCallback):
    """Per optimizer step, each parameter group's update |new - old| in units of the step's learning rate: its root
    mean square and its maximum (with the parameter that holds it, in `update_probe.jsonl`). Adam moves a parameter
    by about lr whatever the size of its gradient, so a step that flips a confident token (the format breaks of the
    GPU runs) may come from a small gradient; this shows which part of the model moved, and by how much."""

    def __init__(self, trainer):
        self.trainer, self._before = trainer, None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self._before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        before, self._before = self._before, None
        if not before or optimizer is None:
            return
        lr = optimizer.param_groups[0]["lr"]
        if not lr:
            return
        # per group: each parameter's sum of squares and largest move, read back to the host once (not per tensor)
        names: dict[str, list] = {}
        stats: dict[str, list] = {}
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name not in before or not p.numel():
                    continue
                delta = (p.detach() - before[name]).abs()
                group = param_group(name)
                names.setdefault(group, []).append((name, delta.numel()))
                stats.setdefault(group, []).append(torch.stack([delta.square().sum(), delta.max()]).float())
            host = {group: torch.stack(rows).cpu().tolist() for group, rows in stats.items()}
        sums = {}  # group -> (sum of squares, count, max, parameter at the max)
        for group, rows in host.items():
            top = max(range(len(rows)), key=lambda i: rows[i][1])
            sums[group] = (sum(r[0] for r in rows), sum(n for _, n in names[group]), rows[top][1],
                           names[group][top][0])
        row = {"step": state.global_step + 1, "lr": lr, "groups": {}}
        for group, (sq, n, top, name) in sorted(sums.items()):
            rms = (sq / max(n, 1)) ** 0.5 / lr
            row["groups"][group] = {"rms_lr": rms, "max_lr": top / lr, "max_at": name}
            self.trainer._metrics["train"][f"probe/update_rms_lr/{group}"].append(rms)
            self.trainer._metrics["train"][f"probe/update_max_lr/{group}"].append(top / lr)
        if state.is_world_process_zero:
            with open(Path(args.output_dir) / UPDATE_FILE, "a") as f:
                f.write(json.dumps(row) + "\n")
