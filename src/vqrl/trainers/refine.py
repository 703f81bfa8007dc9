"""The Refine trainer (Refine-IQA Stage-2): rewards the thinking that makes the policy more sure of the true score.

PD for completion i: how much more probable the true score tokens become after its think text than with no thinking,
pd_i = clamp(Σ_k w_k (P_think,i,k − P_nothink,k), 0, 1), read by teacher forcing, without gradient, and added only to
completions that pass every `pd_gate` rule reward (format and answer), as the seed does. The seed's advantage shaping is
an option. Sources and where we differ: docs/rewards.md. It must keep every rank's number of forward calls independent
of the data (ZeRO-3 would hang otherwise).
"""

from __future__ import annotations

import math
import time

import torch

from ..data.prompts import SCORE_PREFIX, format_score
from ..data.records import to_float
from ..modeling import vision as V
from ..modeling.teacher_forcing import teacher_forced_probs
from ..rewards import build_reward_funcs, reward_options
from ..rewards.parsing import completion_text, thought_of
from .base import VQRLTrainer

# Weights of the score tokens "d", ".", "d", "d" (e.g. 4 . 4 0). seed: the seed's rule
# (jzhws/VisualQualityAssessment-RL-Trainer, src/open_r1/trainer/grpo_trainer_refine-iqa.py): the probability of the
# tenths digit only, after the true integer digit and point. paper: our reading of the paper's weighted per-token
# difference (the integer digit matters most, the point carries no information); the paper gives no weights we can cite.
PD_WEIGHTS = {"seed": (0.0, 0.0, 1.0, 0.0), "paper": (0.6, 0.0, 0.3, 0.1)}

# The seed's advantage shaping: a group "passes" when some reward reaches 2 (both 0/1 rules right); otherwise every
# advantage is lowered by 0.2·1e-4 before dividing by std + 1e-4, which is −0.2 exactly when all rewards are equal.
SEED_PASS_REWARD = 2.0
SEED_STD_EPS = 1e-4
SEED_NO_PASS_SHIFT = 0.2 * 1e-4


def seed_score_text(mos) -> str:
    """The MOS as the seed writes the PD target: truncated, not rounded, to two decimals (`str(mos)[:4]`, 4.4008 ->
    "4.40", 4.999 -> "4.99"), zero-padded where str() is shorter (4.4 -> "4.40", where the seed misreads a digit)."""
    text = repr(float(mos))
    whole, point, decimals = text.partition(".")
    if not point or not whole.lstrip("-").isdigit() or not decimals.isdigit():  # 1e-05, inf, nan: not a MOS
        return format_score(mos)
    return f"{whole}.{(decimals + '00')[:2]}"


def seed_advantages(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """The seed's advantages for a whole batch of groups (consecutive blocks of num_generations rewards).

    Per group: if some reward is ≥ 2, (r − mean) / (std + 1e-4) with every value ≤ 0 set to 0; otherwise
    (r − mean − 0.2·1e-4) / (std + 1e-4). std is unbiased (torch's default, as in the seed). Computed in float32
    (the seed's dtype), or in float64 when given float64 (the property test compares the formula there, free of
    float32 rounding, which the 1e-4 in the divisor magnifies).
    """
    grouped = rewards.to(torch.promote_types(rewards.dtype, torch.float32)).view(-1, num_generations)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)
    passes = (grouped >= SEED_PASS_REWARD).any(dim=1, keepdim=True)
    normalised = ((grouped - mean) / (std + SEED_STD_EPS)).clamp(min=0.0)
    lowered = (grouped - mean - SEED_NO_PASS_SHIFT) / (std + SEED_STD_EPS)
    return torch.where(passes, normalised, lowered).view(-1)


class RefineTrainer(VQRLTrainer):
    """GRPO with the PD reward added as one more reward function named `pd` (weight 1)."""

    extra_columns = ("prompt_nothink",)  # the no-think form of each prompt: PD's baseline

    @classmethod
    def config_problems(cls, args) -> list[str]:
        out = super().config_problems(args)
        if args.pd_mode not in PD_WEIGHTS:
            out.append(f"--pd_mode {args.pd_mode}: must be one of {', '.join(PD_WEIGHTS)}")
        weights = args.pd_weights
        if weights is not None and (len(weights) != 4 or any(to_float(w) is None for w in weights)):
            out.append(f"--pd_weights {' '.join(map(str, weights))}: give 4 finite weights, one per score token "
                       "(d . d d)")
        if not args.pd_gate:
            out.append("--pd_gate: must name at least one rule reward (e.g. format answer)")
        else:
            try:
                build_reward_funcs(args.pd_gate, **reward_options(args))
            except ValueError as exc:
                out.append(f"--pd_gate {' '.join(map(str, args.pd_gate))}: {exc}")
        return out

    def __init__(self, *args, **kwargs):
        config = kwargs["args"]
        problems = self.config_problems(config)
        if problems:  # before anything else: the base would only check after this reads the options
            raise ValueError("\n".join(problems))
        self.pd_weights = tuple(float(w) for w in (config.pd_weights or PD_WEIGHTS[config.pd_mode]))
        self._score_text = seed_score_text if config.pd_mode == "seed" else format_score

        def pd(completions, **kw):  # named `pd` so TRL logs rewards/pd/mean
            return self._pd_rewards(completions, **kw)

        kwargs["reward_funcs"] = list(kwargs["reward_funcs"]) + [pd]
        if config.reward_weights is not None:
            config.reward_weights = list(config.reward_weights) + [1.0]
        super().__init__(*args, **kwargs)
        self._gate = build_reward_funcs(config.pd_gate, **reward_options(config))
        score_tokens = self._tokenizer.encode(self._score_text(1.23), add_special_tokens=False)
        if len(score_tokens) != len(self.pd_weights):
            raise ValueError(f"PD needs a tokenizer that writes a score d.dd as 4 tokens (Qwen's digits are one token "
                             f"each); this one gives {len(score_tokens)} for {self._score_text(1.23)!r}")
        self._gathered_rewards: torch.Tensor | None = None
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
        """Σ_k w_k P_k; 0 for a target that is not 4 tokens (a MOS of 10 or more, which validation refuses)."""
        if len(probs) != len(self.pd_weights):
            return 0.0
        return float(sum(w * float(p) for w, p in zip(self.pd_weights, probs)))

    def _passes_gate(self, completions, columns: dict) -> list[bool]:
        """Whether each completion earns every gate reward in full (the seed: format and answer both 1)."""
        passed = [True] * len(completions)
        for rule in self._gate:
            passed = [ok and value >= 1.0 for ok, value in zip(passed, rule(completions, **columns))]
        return passed

    def _pd_rewards(self, completions, solution, prompt_nothink, sample_id, **kwargs) -> list[float]:
        started, calls_before = time.perf_counter(), self.pd_forward_calls
        tok = self._tokenizer
        n = len(completions)
        texts = [completion_text(c) for c in completions]
        quiet = {k: v for k, v in kwargs.items() if k not in ("log_metric", "log_extra")}  # logged by their own runs
        passed = self._passes_gate(completions, {"solution": solution, "sample_id": sample_id, **quiet})
        prompt_ids, visions = self._pending_prompt_ids, self._pending_vision
        prefix = tok.encode(SCORE_PREFIX, add_special_tokens=False)
        targets = [tok.encode(self._score_text(float(s)), add_special_tokens=False) for s in solution]

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
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """Keep the rewards of the whole batch, gathered over processes by TRL, for the seed's advantages."""
        self._gathered_rewards = super()._calculate_rewards(inputs=inputs, prompts=prompts, completions=completions,
                                                            completion_ids_list=completion_ids_list)
        return self._gathered_rewards

    def _generate_and_score_completions(self, inputs):
        self._gathered_rewards = None
        output = super()._generate_and_score_completions(inputs=inputs)
        if self.args.pd_advantage_shaping:
            advantages = output["advantages"]
            output["advantages"] = self._seed_advantages_local(len(advantages)).to(advantages)
        return output

    def _seed_advantages_local(self, n_local: int) -> torch.Tensor:
        """This process's slice of the seed's advantages over the whole gathered batch (groups may straddle
        processes: TRL gathers every process's rewards in process order and slices its advantages the same way)."""
        per_func = self._gathered_rewards
        if per_func is None:
            raise RuntimeError("pd_advantage_shaping: TRL did not score this batch through _calculate_rewards "
                               "(written against trl 1.16); the seed's advantages cannot be computed")
        rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        generations = self.num_generations if self.model.training else self.num_generations_eval
        start = self.accelerator.process_index * n_local
        return seed_advantages(rewards, generations)[start:start + n_local]
