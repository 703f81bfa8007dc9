"""Training entry (`python -m vqrl.grpo`, `vqrl train`, what `accelerate launch` runs): config -> data -> rewards ->
trainer -> train. Flags are TRL's GRPOConfig and ModelConfig plus vqrl's (see config.py); `--config recipe.yaml` too.

It wires parts together and owns no algorithm; every problem found before step 1 is reported before step 1, and a
configuration problem before any model loads (one line each, exit 2: see config_checks.py).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback, set_seed
from transformers.trainer_callback import ProgressCallback
from trl import ModelConfig, get_peft_config

from .config import VQRLConfig
from .config import parse as parse_config
from .config_checks import (ConfigError, as_config_error, check_config, resolve_resume, resume_setting,
                            uses_deepspeed)
from .data.dataset import DataConfig, MediaLoader, RowBuilder, load_checked_records, make_train_dataset
from .data.media import VisionSpec
from .data.prompts import PromptConfig
from .data.records import DataError
from .modeling.vision import set_pixel_budgets
from .rewards import build_reward_funcs, reward_options
from .trainers import get_trainer
from .training import checkpoints, saved_settings
from .training.heartbeat import EXIT_CONFIG_ERROR, Heartbeat, heartbeat_path, report_config_error
from .training.metrics import MetricsLogger, ResourceLogger
from .training.progress import CompactProgress

logger = logging.getLogger("vqrl")
# The embedded default model, built once per machine: a tiny random Qwen2.5-VL taught the answer format (not quality)
# by a short warm-up (training/warmup.py), so that GRPO's rewards vary from step 1 and the demo visibly learns.
EMBEDDED_MODEL = "tiny-qwen2_5_vl-format-v1"


class HeartbeatCallback(TrainerCallback):
    """Tells the watchdog we are alive at every step boundary (generation and saving beat from the trainer)."""

    def __init__(self, heartbeat: Heartbeat):
        self.heartbeat = heartbeat

    def on_step_begin(self, args, state, control, **kwargs):
        self.heartbeat.beat(state.global_step, "train")

    def on_step_end(self, args, state, control, **kwargs):
        self.heartbeat.beat(state.global_step, "step_end", force=True)

    def on_train_end(self, args, state, control, **kwargs):
        self.heartbeat.beat(state.global_step, "done", force=True)


def load_model_and_processor(model_args: ModelConfig, args: VQRLConfig):
    """from_pretrained on a local path or hub id; with no model given, the embedded tiny default (built once)."""
    path = model_args.model_name_or_path
    if not path:
        path = model_args.model_name_or_path = embedded_model()
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    if dtype is None:
        dtype = torch.bfloat16 if args.bf16 else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(
        path,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation or "sdpa",
        trust_remote_code=args.trust_remote_code,
        use_safetensors=True,
    )
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=args.trust_remote_code,
                                              padding_side="left")
    return model, processor


def embedded_model() -> str:
    """The embedded default model's folder ($XDG_CACHE_HOME/vqrl or ~/.cache/vqrl), built on first use under a lock
    (every process of a launch may ask at once) and published in one rename, so a crash never leaves half of it."""
    import fcntl

    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vqrl")
    path = os.path.join(cache, EMBEDDED_MODEL)
    if os.path.isfile(os.path.join(path, checkpoints.MARKER)):
        return path
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, f".{EMBEDDED_MODEL}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isfile(os.path.join(path, checkpoints.MARKER)):
            logger.info("no --model_name_or_path: building the embedded tiny Qwen2.5-VL in %s (once, about a "
                        "minute): random weights, then a short warm-up that teaches the answer format, not quality",
                        path)
            # its own process: the warm-up's Trainer would pin accelerate's process-wide state to its settings; and a
            # single process, so without the launcher's variables (with them it joined the launch's process group as
            # one more rank 0 and waited for the other ranks forever: `NPROC=2 bash finetune_RL.sh` hung)
            subprocess.run([sys.executable, "-m", "vqrl.training.warmup", path], check=True,
                           env=single_process_env(os.environ))
    return path


LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                    "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "CROSS_RANK",
                    "CROSS_SIZE", "LOCAL_SIZE")


def single_process_env(env) -> dict:
    """`env` without what torchrun / accelerate launch set for a rank of a launch (ranks, rendezvous, accelerate's
    and DeepSpeed's distributed settings): a helper process started from a rank runs on its own."""
    return {k: v for k, v in env.items()
            if k not in LAUNCH_VARIABLES and not k.startswith(("TORCHELASTIC_", "ACCELERATE_", "DEEPSPEED_"))}


def freeze_vision(model, keep_merger: bool = False) -> None:
    """Freeze the vision tower; with keep_merger its projector(s) into the language model stay trainable (Qwen-VL
    names them `merger`, Qwen3-VL adds `deepstack_merger_list`)."""
    visual = getattr(getattr(model, "model", model), "visual", None)
    if visual is None:
        return
    visual.requires_grad_(False)
    if keep_merger:
        mergers = [m for name, m in visual.named_children() if name == "merger" or name.startswith("deepstack_merger")]
        if not mergers:
            raise ValueError(f"train_merger: {type(visual).__name__} has no merger module")
        for m in mergers:
            m.requires_grad_(True)


def make_reward_funcs(args: VQRLConfig) -> list:
    return build_reward_funcs(args.reward_funcs, **reward_options(args))


def build_trainer(args: VQRLConfig, model_args: ModelConfig, model=None, processor=None, reward_funcs=None):
    """Everything but `.train()`: for the entry point, tests and the benchmark (which passes its own model)."""
    set_seed(args.seed)
    if model is None or processor is None:
        model, processor = load_model_and_processor(model_args, args)
    # the run's pixel budgets on whichever processor it got (loaded here or passed in, as `vqrl bench` does): a
    # passed-in processor kept its own, so --max_pixels above it was silently capped (1260 px images became 980)
    set_pixel_budgets(processor, args.min_pixels, args.max_pixels, args.video_max_pixels)
    if args.freeze_vision_tower:
        freeze_vision(model, keep_merger=args.train_merger)
    spec = VisionSpec.for_processor(
        processor,
        video_fps=args.video_fps,
        video_max_frames=args.video_max_frames,
        video_max_pixels=args.video_max_pixels,
        video_total_pixels=args.video_total_pixels,
    )
    data_cfg = DataConfig(args.data_files, args.data_weights, args.image_root, args.video_root,
                          args.on_bad_sample, args.seed)
    prompt_cfg = PromptConfig(think=args.think, system_prompt=args.system_prompt,
                              use_record_question=args.use_record_question)
    records = load_checked_records(data_cfg, spec, processor, prompt_cfg, args.max_prompt_length,
                                   progress=args.local_process_index == 0)  # the checks of validate-data, decoding
    trainer_cls = get_trainer(args.trainer)
    loader = MediaLoader(spec, None, None, workers=args.media_prefetch_workers,  # records carry anchored paths
                         cache_size=max(64, 2 * (args.generation_batch_size or 0)))
    builder = RowBuilder(records, loader, prompt_cfg,
                         extra_columns=trainer_cls.extra_columns)
    dataset = make_train_dataset(records, builder)
    if reward_funcs is None:
        reward_funcs = make_reward_funcs(args)
    heartbeat = Heartbeat(heartbeat_path(args.output_dir)) if args.heartbeat and args.should_save else None
    callbacks = [MetricsLogger(args.output_dir), ResourceLogger(args.output_dir)]
    callbacks += [HeartbeatCallback(heartbeat)] if heartbeat else []
    trainer = trainer_cls(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
        heartbeat=heartbeat,
    )
    trainer.row_builder = builder
    if args.progress == "bar" and not args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(CompactProgress(f"{args.trainer} GRPO"))
    logger.info("%s trainer: %d records, rewards %s", args.trainer, len(records), ", ".join(args.reward_funcs))
    return trainer


def train(args: VQRLConfig, model_args: ModelConfig) -> int:
    """Check everything that needs no model, then train and publish final/ (or only publish it, when the newest
    checkpoint already is the run's last step: a finished or nearly finished run re-run trains no further step)."""
    check_config(args, model_args)
    with as_config_error("rewards"):
        reward_funcs = make_reward_funcs(args)
    resume = resume_setting(args)
    if args.resume is None and args.resume_from_checkpoint:
        logger.info("--resume_from_checkpoint %s is read as vqrl's --resume %s", args.resume_from_checkpoint, resume)
    checkpoint = resolve_resume(resume, args.output_dir, deepspeed=uses_deepspeed(args))
    if args.should_save:
        for path in checkpoints.clean_partial(args.output_dir):
            logger.warning("removed a half-written checkpoint left by a crash: %s", path)
    done = checkpoints.marker_step(checkpoint) if checkpoint else None
    if done is not None and args.max_steps > 0 and done >= args.max_steps:
        return finish_trained_run(args, checkpoint, args.max_steps)
    trainer = build_trainer(args, model_args, reward_funcs=reward_funcs)
    if done is not None and args.max_steps <= 0:  # epoch-based: the Trainer knows how many steps the epochs make
        planned = planned_steps(trainer)
        if done >= planned:
            return finish_trained_run(args, checkpoint, planned)
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    final = save_final(trainer, args.output_dir)
    if trainer.row_builder.failures:
        logger.warning("%d record(s) could not be decoded during training and were replaced by others",
                       len(trainer.row_builder.failures))
    logger.info("done: model in %s, metrics in %s", final, os.path.join(args.output_dir, "metrics.jsonl"))
    return 0


def save_final(trainer, output_dir: str) -> str:
    """The trained model and processor into output_dir/final: staged, marked with its step, renamed in one go."""
    final = os.path.join(output_dir, checkpoints.FINAL)
    staging = os.path.join(output_dir, checkpoints.FINAL_STAGING)
    if trainer.accelerator.is_main_process:
        checkpoints.clear_dir(staging)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(staging)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(staging)
        saved_settings.write(staging, saved_settings.of_config(trainer.args))  # what `vqrl eval` reads by default
        checkpoints.publish(staging, final, trainer.state.global_step)
    trainer.accelerator.wait_for_everyone()
    return final


def finish_trained_run(args: VQRLConfig, checkpoint: str, planned: int) -> int:
    """The newest checkpoint is the run's last step: train nothing (the Trainer would run one step past it and log
    its end-of-run row again), only make sure final/ holds that step."""
    step = checkpoints.marker_step(checkpoint)
    final = os.path.join(args.output_dir, checkpoints.FINAL)
    if step > planned:
        logger.warning("%s is past the %d steps this run asks for; it is the run's result", checkpoint, planned)
    if checkpoints.marker_step(final) == step:
        logger.info("nothing to train: the run is complete (%s is step %d of %d; %s holds it)", checkpoint, step,
                    planned, final)
    elif args.should_save:
        checkpoints.export_final(checkpoint, args.output_dir)
        logger.info("nothing to train: %s is step %d of %d; wrote %s from it", checkpoint, step, planned, final)
    return 0


def planned_steps(trainer) -> int:
    """Total optimizer steps of the run as the Trainer computes them (transformers 5.x returns 7 values, max_steps
    last); checked, so a change in transformers fails here loudly rather than training an extra step."""
    values = trainer.set_initial_training_values(args=trainer.args, dataloader=trainer.get_train_dataloader())
    if not (isinstance(values, tuple) and len(values) == 7 and isinstance(values[-1], int)):
        raise RuntimeError("transformers' Trainer.set_initial_training_values no longer returns 7 values ending in "
                           "max_steps (written against transformers 5.x); update vqrl.grpo.planned_steps")
    return values[-1]


def parse(argv: list[str] | None = None) -> tuple[VQRLConfig, ModelConfig]:
    return parse_config(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[vqrl] %(message)s")
    args = None
    try:
        args, model_args = parse(argv)
        return train(args, model_args)
    except ConfigError as exc:
        return refuse("configuration error", exc)
    except DataError as exc:
        return refuse("data error", exc)
    except Exception as exc:
        if args is None or not checkpoints.no_space_left(exc, args.output_dir):
            raise
        return out_of_space(args, exc)


def refuse(kind: str, exc: Exception) -> int:
    """A mistake the user must fix: say it (one line per problem), tell a watchdog not to retry, exit 2."""
    message = str(exc).strip() or type(exc).__name__
    lines = message.splitlines()
    print(f"vqrl: {kind}: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(f"  {line}", file=sys.stderr)
    report_config_error(f"{kind}: {message}")
    return EXIT_CONFIG_ERROR


def out_of_space(args: VQRLConfig, exc: Exception) -> int:
    """A full disk: say so (torch says "unexpected pos ..."), remove the half-written checkpoint, exit 1."""
    removed = checkpoints.clean_partial(args.output_dir) if args.should_save else []
    free = checkpoints.free_bytes(args.output_dir)
    latest = checkpoints.latest_complete(args.output_dir)
    print(f"vqrl: no space left on device under {args.output_dir} ({(free or 0) / 2**20:.0f} MiB free) while "
          f"writing: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
    print(f"  removed {len(removed)} half-written folder(s); complete checkpoints are untouched. Free space, then "
          f"run again with --resume auto (it resumes from {latest or 'the start: no complete checkpoint yet'})",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
