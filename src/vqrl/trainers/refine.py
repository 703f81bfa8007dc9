"""The Refine trainer (Refine-IQA Stage-2): rewards the thinking that makes the policy more sure of the true score.

PD for completion i: how much more probable the true score tokens become after its think text than with no thinking,
pd_i = clamp(Σ_k w_k (P_think,i,k − P_nothink,k), 0, 1), read by teacher forcing, without gradient, and added only to
completions that pass both rule rewards (format and answer), as the seed does. It must keep every rank's number of
forward calls independent of the data (ZeRO-3 would hang otherwise).
"""

from __future__ import annotations

import math
import time

import torch

from ..data.prompts import SCORE_PREFIX, format_score
from ..eval.inference import teacher_forced_probs
from ..rewards import build_reward_funcs
from ..rewards.parsing import completion_text
from . import vision as V
from .base import VQRLTrainer

# Weights of the score tokens "d", ".", "d", "d" (e.g. 4 . 4 0). Paper mode: our reading of the paper's weighted
# per-token difference — the integer digit matters most, the point carries no information. Seed mode: the seed's
# single-digit variant (the tenths digit only).
PD_WEIGHTS = {"paper": (0.6, 0.0, 0.3, 0.1), "seed": (0.0, 0.0, 1.0, 0.0)}


def thought_of(text: str) -> str:
    """The completion up to and including `</think>` (the whole text, closed, when the tag is missing)."""
    end = text.find("</think>")
    return text[: end + len("</think>")] if end >= 0 else text + "</think>"


class RefineTrainer(VQRLTrainer):
    """GRPO with the PD reward added as one more reward function named `pd` (weight 1)."""

    def __init__(self, *args, **kwargs):
        config = kwargs["args"]
        if config.pd_mode not in PD_WEIGHTS:
            raise ValueError(f"pd_mode must be one of {', '.join(PD_WEIGHTS)}, got {config.pd_mode!r}")
        self.pd_weights = tuple(config.pd_weights or PD_WEIGHTS[config.pd_mode])

        def pd(completions, **kw):  # named `pd` so TRL logs rewards/pd/mean
            return self._pd_rewards(completions, **kw)

        kwargs["reward_funcs"] = list(kwargs["reward_funcs"]) + [pd]
        if config.reward_weights is not None:
            config.reward_weights = list(config.reward_weights) + [1.0]
        super().__init__(*args, **kwargs)
        self._format, self._answer = build_reward_funcs(["format", "answer"], answer_threshold=config.answer_threshold)
        self._last_passed: list[bool] | None = None
        self.pd_forward_calls = 0  # cumulative, for the cost log and the equal-calls test

    # ---- the PD reward -------------------------------------------------------------------------------------------
    def _forward_probs(self, prefixes, targets, visions) -> list[torch.Tensor]:
        """Teacher-forced probabilities in chunks of a fixed size: the number of calls depends on len(prefixes) only."""
        step = self.args.per_device_train_batch_size
        out = []
        for start in range(0, len(prefixes), step):
            out += teacher_forced_probs(self.model, prefixes[start:start + step], targets[start:start + step],
                                        visions[start:start + step], self._tokenizer.pad_token_id,
                                        encode_once=self.vision_once)
            self.pd_forward_calls += 1
        return out

    def _weighted(self, probs: torch.Tensor) -> float:
        return float(sum(w * float(p) for w, p in zip(self.pd_weights, probs)))

    def _pd_rewards(self, completions, solution, prompt_nothink, sample_id, **kwargs) -> list[float]:
        started, calls_before = time.perf_counter(), self.pd_forward_calls
        tok = self._tokenizer
        n = len(completions)
        texts = [completion_text(c) for c in completions]
        quiet = {k: v for k, v in kwargs.items() if k not in ("log_metric", "log_extra")}  # logged by their own runs
        fmt = self._format(completions, solution=solution, **quiet)
        ans = self._answer(completions, solution=solution, **quiet)
        passed = [f >= 1.0 and a >= 1.0 for f, a in zip(fmt, ans)]
        self._last_passed = passed
        prompt_ids, visions = self._pending_prompt_ids, self._pending_vision
        prefix = tok.encode(SCORE_PREFIX, add_special_tokens=False)
        targets = [tok.encode(format_score(float(s)), add_special_tokens=False) for s in solution]

        # think: prompt + the completion's own thought + "<answer>Score: " -> the true score tokens
        think_prefixes = [prompt_ids[i] + tok.encode(thought_of(texts[i]), add_special_tokens=False) + prefix
                          for i in range(n)]
        p_think = self._forward_probs(think_prefixes, targets, visions)

        # no-think: one forward per prompt (consecutive completions share it), padded to a data-independent count
        firsts = [i for i in range(n) if i == 0 or sample_id[i] != sample_id[i - 1]]
        slots = min(n, math.ceil(n / self.num_generations) + 1)
        chosen = (firsts + [firsts[-1]] * slots)[:slots] if len(firsts) <= slots else firsts
        encoded = [V.encode_prompt(self.processing_class, prompt_nothink[i], **self.chat_template_kwargs)
                   for i in chosen]
        p_nothink_first = self._forward_probs([e[0] + prefix for e in encoded], [targets[i] for i in chosen],
                                              [e[1] for e in encoded])
        by_prompt = dict(zip(chosen, p_nothink_first))
        owner = 0
        rewards, think_w, nothink_w = [], [], []
        for i in range(n):
            if i in by_prompt:
                owner = i
            pt, pn = self._weighted(p_think[i]), self._weighted(by_prompt[owner])
            think_w.append(pt)
            nothink_w.append(pn)
            rewards.append(min(1.0, max(0.0, pt - pn)) if passed[i] else 0.0)

        mode = "train" if self.model.training else "eval"
        gathered = self.accelerator.gather(torch.tensor([think_w, nothink_w, [float(p) for p in passed]],
                                                        device=self.accelerator.device).T).float()
        self._metrics[mode]["refine/p_think"].append(gathered[:, 0].mean().item())
        self._metrics[mode]["refine/p_nothink"].append(gathered[:, 1].mean().item())
        self._metrics[mode]["refine/frac_earning_pd"].append(gathered[:, 2].mean().item())
        self._metrics[mode]["refine/pd_seconds"].append(time.perf_counter() - started)
        self._metrics[mode]["refine/pd_forward_calls"].append(float(self.pd_forward_calls - calls_before))
        return rewards

    # ---- the seed's advantage shaping (option) -------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.args.pd_advantage_shaping and self._last_passed is not None:
            output["advantages"] = self._shape_advantages(output["advantages"], self._last_passed)
        return output

    def _shape_advantages(self, advantages: torch.Tensor, passed_local: list[bool]) -> torch.Tensor:
        """Per group: if any completion passes both rules, negative advantages become 0; if none does, all −0.2."""
        n = len(passed_local)
        passed = self.accelerator.gather(torch.tensor(passed_local, device=advantages.device).float())
        groups = passed.view(-1, self.num_generations).amax(dim=1).repeat_interleave(self.num_generations)
        local = groups[self.accelerator.process_index * n:(self.accelerator.process_index + 1) * n].bool()
        shaped = advantages.clone()
        shaped[local & (shaped < 0)] = 0.0
        shaped[~local] = -0.2
        return shaped
