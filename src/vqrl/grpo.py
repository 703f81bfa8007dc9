"""Training entry (`python -m vqrl.grpo`, `vqrl train`, what `accelerate launch` runs): config -> data -> rewards ->
trainer -> train. Flags are TRL's GRPOConfig and ModelConfig plus vqrl's (see config.py); `--config recipe.yaml` too.

It wires parts together and owns no algorithm; every problem found before step 1 is reported before step 1.
"""

from __future__ import annotations

import logging
import os
import sys

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback, set_seed
from trl import ModelConfig, TrlParser, get_peft_config

from .config import VQRLConfig
from .data.dataset import DataConfig, MediaLoader, RowBuilder, load_checked_records, make_train_dataset
from .data.media import VisionSpec
from .data.prompts import PromptConfig
from .data.records import DataError
from .rewards import build_reward_funcs
from .trainers import get_trainer
from .training import checkpoints
from .training.heartbeat import Heartbeat, heartbeat_path
from .training.metrics import MetricsLogger, ResourceLogger

logger = logging.getLogger("vqrl")
DEFAULT_TINY = os.path.join("outputs", "tiny-qwen2_5_vl")


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
        path = DEFAULT_TINY
        if not os.path.exists(os.path.join(path, "config.json")):
            from .models.tiny import make_tiny_model

            logger.info("no --model_name_or_path: building the embedded tiny Qwen2.5-VL at %s", path)
            make_tiny_model("qwen2_5_vl", path)
        model_args.model_name_or_path = path
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
    for proc in (processor.image_processor, getattr(processor, "video_processor", None)):
        if proc is None:
            continue
        if args.min_pixels:
            proc.size["shortest_edge"] = args.min_pixels
        max_px = args.max_pixels if proc is processor.image_processor else (args.video_max_pixels or args.max_pixels)
        if max_px:
            proc.size["longest_edge"] = max_px
    return model, processor


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


def build_trainer(args: VQRLConfig, model_args: ModelConfig, model=None, processor=None):
    """Everything but `.train()`: for the entry point, tests and the benchmark (which passes its own model)."""
    set_seed(args.seed)
    if model is None or processor is None:
        model, processor = load_model_and_processor(model_args, args)
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
    builder = RowBuilder(records, MediaLoader(spec, None, None), prompt_cfg,  # records carry anchored paths
                         with_nothink=args.trainer == "refine")
    dataset = make_train_dataset(records, builder)
    options = {"answer_threshold": args.answer_threshold}
    if args.gauss_sigma is not None:
        options["gauss_sigma"] = args.gauss_sigma
    reward_funcs = build_reward_funcs(args.reward_funcs, **options)
    heartbeat = Heartbeat(heartbeat_path(args.output_dir)) if args.heartbeat and args.should_save else None
    callbacks = [MetricsLogger(args.output_dir), ResourceLogger(args.output_dir)]
    callbacks += [HeartbeatCallback(heartbeat)] if heartbeat else []
    trainer_cls = get_trainer(args.trainer)
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
    logger.info("%s trainer: %d records, rewards %s", args.trainer, len(records), ", ".join(args.reward_funcs))
    return trainer


def train(args: VQRLConfig, model_args: ModelConfig) -> int:
    os.makedirs(args.output_dir, exist_ok=True)
    resume = args.resume or os.environ.get("VQRL_RESUME")
    if args.should_save:
        for path in checkpoints.clean_partial(args.output_dir):
            logger.warning("removed a half-written checkpoint left by a crash: %s", path)
    checkpoint = checkpoints.resolve_resume(resume, args.output_dir)
    trainer = build_trainer(args, model_args)
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    final = os.path.join(args.output_dir, "final")
    staging = os.path.join(args.output_dir, ".staging-final")
    trainer.save_model(staging)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(staging)
        checkpoints.clear_dir(final)
        os.replace(staging, final)
    if trainer.row_builder.failures:
        logger.warning("%d record(s) could not be decoded during training and were replaced by others",
                       len(trainer.row_builder.failures))
    logger.info("done: model in %s, metrics in %s", final, os.path.join(args.output_dir, "metrics.jsonl"))
    return 0


def parse(argv: list[str] | None = None) -> tuple[VQRLConfig, ModelConfig]:
    parser = TrlParser((VQRLConfig, ModelConfig))
    return parser.parse_args_and_config(args=argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[vqrl] %(message)s")
    args, model_args = parse(argv)
    try:
        return train(args, model_args)
    except DataError as exc:
        print(f"vqrl: data error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
