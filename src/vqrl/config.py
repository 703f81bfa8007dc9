"""vqrl's options, as one dataclass that extends TRL's GRPOConfig, so every TRL flag keeps its name and meaning.

Only options TRL lacks are added here (data, prompts, vision budgets, rewards by name, trainer choice, Refine, resume);
defaults reproduce the seed's recipe where it had one. `parse` reads them (flags and `--config recipe.yaml`), with
vqrl's own flags first in `--help`; it checks syntax only (config_checks.py checks meaning).
"""

from __future__ import annotations

import argparse
import difflib
import json
from dataclasses import dataclass, field, fields

import yaml
from transformers import TrainingArguments
from trl import GRPOConfig, ModelConfig, TrlParser

from .config_checks import ConfigError, normalise_lists


@dataclass
class VQRLConfig(GRPOConfig):
    # which trainer: a flag, never an edit of code
    trainer: str = field(default="standard", metadata={"help": "standard | vllm | refine"})

    # data
    data_files: list[str] = field(default_factory=lambda: ["examples/RL_examples.json"],
                                  metadata={"help": "JSON list or JSONL files of records (seed format)"})
    data_weights: list[float] | None = field(default=None, metadata={"help": "per-file weight: 2 = twice, 0.5 = half"})
    image_root: list[str] | None = field(default=None, metadata={"help": "folder relative image paths start from; "
                                                                          "one for all files or one per file"})
    video_root: list[str] | None = field(default=None, metadata={"help": "folder relative video paths start from; "
                                                                          "one for all files or one per file"})
    on_bad_sample: str = field(default="error", metadata={"help": "error: refuse to start | skip: drop and count"})

    # prompts
    think: bool = field(default=True, metadata={"help": "think mode (<think>..</think><answer>..</answer>)"})
    system_prompt: str | None = field(default=None, metadata={"help": "optional system turn"})
    use_record_question: bool = field(default=True, metadata={"help": "use each record's own `question` field"})
    max_prompt_length: int | None = field(default=None, metadata={"help": "refuse prompts longer than this (tokens, vision included)"})

    # vision budgets (None: the processor's own)
    min_pixels: int | None = field(default=None, metadata={"help": "image min pixels (Qwen smart_resize)"})
    max_pixels: int | None = field(default=None, metadata={"help": "image max pixels (Qwen smart_resize)"})
    video_fps: float = field(default=2.0, metadata={"help": "frames sampled per second of video"})
    video_max_frames: int = field(default=16, metadata={"help": "at most this many frames per video"})
    video_max_pixels: int | None = field(default=None, metadata={"help": "per-frame pixel cap"})
    video_total_pixels: int | None = field(default=None, metadata={"help": "pixel budget over all frames of a video"})
    freeze_vision_tower: bool = field(default=True, metadata={"help": "freeze the vision encoder (seed default)"})
    train_merger: bool = field(default=False, metadata={
        "help": "with freeze_vision_tower: keep the merger (the vision-to-language projector) trainable"})
    compiled_generation: str = field(default="auto", metadata={
        "help": "auto | true | false: decode with a static KV cache and a compiled, CUDA-graph forward (HF generate's "
                "compile path). auto: on for CUDA without vLLM, FSDP or PEFT (the settings it was measured in); under ZeRO-3 "
                "while TRL gathers the whole model for generation (ds3_gather_for_generation, its default)"})

    vision_once: str = field(default="auto", metadata={
        "help": "auto | true | false: every log-prob pass (and HF generation's prefill, and Refine's PD passes) "
                "encodes each distinct image/video once, not once per completion, and computes its M-RoPE positions "
                "once per prompt (modeling/rope_once.py); loss and gradients are unchanged "
                "(tests/test_equivalence.py; under ZeRO-3 on one H200: scripts/zero3_equivalence_check.py). auto: on, "
                "except under ZeRO-3 with several processes (not yet run there on GPUs)"})

    batch_vision_windows: bool = field(default=True, metadata={
        "help": "the vision tower's attention runs one SDPA call per window length (windows stacked as a batch), not "
                "one per window as transformers' SDPA path does; same attention (modeling/vision_windows.py, checked "
                "against the per-window calls at the first call). Only where the tower uses SDPA"})

    grouped_decode_attention: bool = field(default=True, metadata={
        "help": "HF generation: each decode step's attention reads the grouped-query KV cache as it is, the query "
                "heads of a group standing in for query positions, instead of copying the cache to every query head "
                "(transformers' SDPA path with a mask); same attention (modeling/grouped_decode.py). On the H200 it "
                "halved HF generation on the 3B shape (docs/perf.md). Only where the language model uses SDPA"})

    checkpoint_layers: str = field(default="all", metadata={
        "help": "with --gradient_checkpointing: all | auto | N. all: every layer recomputes its activations in the "
                "backward (HF's behaviour). N: the vision tower and the first N language layers keep them. auto "
                "(CUDA): after two fully checkpointed steps, the vision tower keeps them if they fit, then as many "
                "language layers as the measured free memory allows (docs/perf.md: the tower's recomputation is "
                "host-bound; kept, one 3B step on the H200 ran 7.6 s against 10.0 s)"})

    media_prefetch_workers: int = field(default=4, metadata={
        "help": "threads that decode the images and videos of the coming prompts while the GPU works on the current "
                "ones (one-process runs; 0: decode when a prompt is asked for). Same rows, failures counted the same"})

    # rewards
    reward_funcs: list[str] = field(default_factory=lambda: ["format", "answer"],
                                    metadata={"help": "reward names (vqrl.rewards.REWARDS) or package.module:function"})
    reward_kwargs: dict | str | None = field(default=None, metadata={
        "help": "reward options by name, as a JSON object: '{\"fidelity_eps\": 1e-6, \"answer_threshold\": 0.35}'. "
                "Each reward's options are its function's keyword parameters (docs/rewards.md); a package.module:"
                "function reward gets the ones its own parameters name"})
    answer_threshold: float | None = field(default=None, metadata={
        "help": "`answer` reward tolerance (the reward's default 0.5 = the seed's; Q-Insight 0.35)"})
    answer_strict_less: bool | None = field(default=None, metadata={
        "help": "`answer` counts |pred - MOS| < threshold (Q-Insight) instead of <= (the default, the seed's)"})
    gauss_sigma: float | None = field(default=None, metadata={"help": "`score_gauss` width (None: the reward's default)"})

    # Refine-IQA (trainer=refine); docs/rewards.md
    pd_mode: str = field(default="seed", metadata={
        "help": "seed: the seed's rule (tenths digit only, MOS truncated to 2 decimals) | paper: our reading of the "
                "paper (weighted per-token difference 0.6/0/0.3/0.1, MOS rounded)"})
    pd_weights: list[float] | None = field(default=None, metadata={"help": "weights of the score tokens (d . d d)"})
    pd_gate: list[str] = field(default_factory=lambda: ["format", "answer"], metadata={
        "help": "rule rewards a completion must earn in full to get PD (the seed's: format_strict answer_strict)"})
    pd_advantage_shaping: bool = field(default=False, metadata={
        "help": "the seed's advantages: a group with a reward >= 2 keeps its positive advantages only; otherwise "
                "(r - mean - 2e-5) / (std + 1e-4)"})

    # run control
    resume: str | None = field(default=None, metadata={"help": "auto: newest complete checkpoint | PATH | none"})
    heartbeat: bool = field(default=True, metadata={"help": "write <output_dir>/heartbeat.json for the watchdog"})
    progress: str = field(default="bar", metadata={
        "help": "bar: one progress bar showing reward, each reward's mean, loss and grad norm | logs: transformers' "
                "bar plus every logged value printed each step (metrics.jsonl has them all either way)"})


    def __post_init__(self):
        # `--reward_kwargs '{...}'` arrives as a string (a recipe gives the mapping itself)
        if isinstance(self.reward_kwargs, str):
            try:
                self.reward_kwargs = json.loads(self.reward_kwargs)
            except ValueError as exc:
                raise ValueError(f"--reward_kwargs {self.reward_kwargs}: not JSON ({exc}); write a JSON object such as "
                                 """'{"fidelity_eps": 1e-6}'""") from None
        if self.reward_kwargs is not None and not isinstance(self.reward_kwargs, dict):
            raise ValueError(f"--reward_kwargs {self.reward_kwargs!r}: must be a JSON object (a mapping of option "
                             """names to values) such as '{"fidelity_eps": 1e-6}'""")
        super().__post_init__()


USAGE = "%(prog)s [--config RECIPE.yaml] [--FLAG VALUE ...]   (python -m vqrl.grpo takes the same flags)"
DESCRIPTION = ("Train a vision-language model to judge visual quality with GRPO. Every flag can also be a key of a YAML "
               "recipe given with --config; flags on the command line win over the recipe.")


class VQRLParser(TrlParser):
    """TRL's parser for (VQRLConfig, ModelConfig) with what a user meets first fixed: vqrl's own flags come first in
    --help (then TRL's, then transformers'), the usage is one line, and every parse error is one ConfigError line
    (an unknown flag or recipe key names the closest known one)."""

    def __init__(self):
        super().__init__((VQRLConfig, ModelConfig), prog="vqrl train", usage=USAGE, description=DESCRIPTION)

    def error(self, message):  # argparse's bad value / missing value: one line, no 400-flag usage block
        if message.endswith("expected one argument"):
            message += " (a negative value is written --flag=-1)"
        raise ConfigError(message)

    def sections(self) -> list[tuple[str, list[argparse.Action]]]:
        """Help sections in the order a vqrl user needs them; each action once, by the dataclass that owns it."""
        own = _names(VQRLConfig) - _names(GRPOConfig)
        trl = _names(GRPOConfig) - _names(TrainingArguments)
        model = _names(ModelConfig)
        titled = [("vqrl options", own), ("TRL GRPO options", trl), ("TRL model options", model),
                  ("transformers training options", None)]
        buckets: list[list[argparse.Action]] = [[] for _ in titled]
        for action in self._actions:
            if isinstance(action, argparse._HelpAction):
                buckets[0].insert(0, action)
                continue
            index = next(i for i, (_, names) in enumerate(titled) if names is None or action.dest in names)
            buckets[index].append(action)
        return [(title, actions) for (title, _), actions in zip(titled, buckets) if actions]

    def format_help(self) -> str:
        # argparse's own formatter, fed our sections (argparse keeps sections per dataclass registration order)
        formatter = self._get_formatter()
        formatter.add_usage(self.usage, self._actions, self._mutually_exclusive_groups)
        formatter.add_text(self.description)
        for title, actions in self.sections():
            formatter.start_section(title)
            formatter.add_arguments(actions)
            formatter.end_section()
        return formatter.format_help()

    def parse(self, argv: list[str] | None) -> tuple[VQRLConfig, ModelConfig]:
        argv = list(argv) if argv is not None else None
        recipe = _recipe_path(argv)
        try:
            args, model_args, from_recipe, from_cli = self.parse_args_and_config(
                args=argv, return_remaining_strings=True, separate_remaining_strings=True)
        except ConfigError:
            raise
        except FileNotFoundError as exc:
            raise ConfigError(f"--config {recipe}: no such file" if recipe and exc.filename == recipe else
                              _one_line(exc)) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {recipe}: not valid YAML: {_one_line(exc)}") from exc
        except (OSError, ValueError, TypeError, ImportError) as exc:  # GRPOConfig / TrainingArguments checks
            raise ConfigError(_one_line(exc)) from exc
        problems = [f"recipe {recipe}: unknown key {key[2:]}{self._hint(key)}" for key in from_recipe[::2]]
        problems += [f"unknown flag {tok}{self._hint(tok)}" if tok.startswith("-") else f"unexpected argument {tok}"
                     for tok in _flags_only(from_cli)]
        if problems:
            raise ConfigError("\n".join(problems))
        normalise_lists(args, _names(VQRLConfig) - _names(GRPOConfig))
        return args, model_args

    def _hint(self, flag: str) -> str:
        known = sorted({a.dest for a in self._actions})
        name = flag.lstrip("-").split("=", 1)[0].replace("-", "_")
        match = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        return f" (did you mean --{match[0]}?)" if match else " (vqrl train --help lists every flag)"


def parse(argv: list[str] | None = None) -> tuple[VQRLConfig, ModelConfig]:
    """(VQRLConfig, ModelConfig) from flags and --config; raises ConfigError (one line per problem)."""
    return VQRLParser().parse(argv)


def _names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def _recipe_path(argv: list[str] | None) -> str | None:
    argv = argv if argv is not None else []
    return argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None


def _flags_only(tokens: list[str]) -> list[str]:
    """Unknown command-line tokens, without the values that follow an unknown flag."""
    out, skip = [], False
    for tok in tokens:
        if tok.startswith("-"):
            out.append(tok)
            skip = "=" not in tok
        elif not skip:
            out.append(tok)
        else:
            skip = False
    return out


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
