"""vqrl's options, as one dataclass that extends TRL's GRPOConfig, so every TRL flag keeps its name and meaning.

Only options TRL lacks are added here (data, prompts, vision budgets, rewards by name, trainer choice, Refine, resume);
defaults reproduce the seed's recipe where it had one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig


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
                "compile path). auto: on for CUDA without vLLM, ZeRO-3, FSDP or PEFT (the settings it was measured in)"})

    checkpoint_layers: str = field(default="auto", metadata={
        "help": "with --gradient_checkpointing: auto | all | N. all: every language layer recomputes its activations "
                "in the backward (HF's behaviour). N: the first N layers keep them. auto (CUDA): after two fully "
                "checkpointed steps, as many layers keep them as the measured free memory allows"})

    # rewards
    reward_funcs: list[str] = field(default_factory=lambda: ["format", "answer"],
                                    metadata={"help": "reward names (vqrl.rewards.REWARDS) or package.module:function"})
    answer_threshold: float = field(default=0.5, metadata={"help": "`answer` reward tolerance (seed 0.5, Q-Insight 0.35)"})
    answer_strict_less: bool = field(default=False, metadata={
        "help": "`answer` counts |pred - MOS| < threshold (Q-Insight) instead of <= (the seed)"})
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
