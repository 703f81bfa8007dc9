"""`vqrl bench`: plain trl.GRPOTrainer against vqrl's trainers on a random-weight model of a real architecture.

Every trainer gets the same model shape, data, batch and forced completion length, in one invocation; each is timed
the same way (CUDA-synchronised wall clock around the same TRL methods). It measures; it must not tune anything.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import tempfile
from contextlib import contextmanager

import torch

from .training.step_timing import PHASES, StepTimer, instrument, profile_step

TRAINERS = {  # bench name -> (vqrl trainer, vLLM rollouts); "trl" is plain trl.GRPOTrainer
    "standard": ("standard", False), "vllm": ("vllm", True), "refine": ("refine", False),
    "refine_vllm": ("refine", True),
}


# Sizes and aspect ratios of real IQA data (KonIQ 1024x768, SPAQ phone photos in both orientations, LIVE-C 500x500,
# KADID 512x384, crops), for `--image_sizes mixed`: each is then fitted to the pixel budget by Qwen's own resize rule.
MIXED_SIZES = ((1024, 768), (768, 1024), (500, 500), (512, 384), (1280, 720), (720, 1280), (900, 600), (600, 900),
               (1600, 1200), (384, 512), (640, 360), (1000, 1000))


def image_sizes(n: int, size: int, kind: str, seed: int = 0) -> list[tuple[int, int]]:
    """(width, height) of each prompt's image: all size x size, or a fixed, seeded draw from MIXED_SIZES."""
    if kind == "square":
        return [(size, size)] * n
    rng = random.Random(seed)
    return [rng.choice(MIXED_SIZES) for _ in range(n)]


def synthetic_images(n: int, size: int, seed: int = 0, kind: str = "square", factor: int = 28):
    """Distinct photographs (the shipped examples, cropped and resized) so no two prompts share pixels; with
    kind="mixed", of mixed sizes and aspect ratios, each already at its Qwen size under a size x size budget (so plain
    TRL and vqrl see the same pixels and the same number of visual tokens)."""
    from PIL import Image

    from .data.media import _resize_dims

    root = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "images")
    files = sorted(f for f in os.listdir(root) if f.endswith(".jpg"))
    rng = random.Random(seed)
    out = []
    for i, (width, height) in enumerate(image_sizes(n, size, kind, seed)):
        img = Image.open(os.path.join(root, files[i % len(files)])).convert("RGB")
        w, h = img.size
        box = rng.randint(0, w // 8), rng.randint(0, h // 8)
        img = img.crop((box[0], box[1], box[0] + 7 * w // 8, box[1] + 7 * h // 8))
        if kind != "square":
            height, width = _resize_dims(height, width, factor, factor * factor, size * size)
        out.append(img.resize((width, height)))
    return out


def synthetic_videos(n: int, workdir: str, seconds: float, width: int, height: int, fps: int = 30) -> list[str]:
    """Distinct clips of realistic size (a pan across a shipped photograph, H.264, 1-second GOPs), written once."""
    import av
    import numpy as np
    from PIL import Image

    root = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "images")
    files = sorted(f for f in os.listdir(root) if f.endswith(".jpg"))
    folder = os.path.join(workdir, f"videos_{width}x{height}_{seconds:g}s")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"{i}.mp4")
        paths.append(path)
        if os.path.exists(path):
            continue
        photo = np.asarray(Image.open(os.path.join(root, files[i % len(files)])).convert("RGB")
                           .resize((width * 2, height)))
        frames = int(seconds * fps)
        with av.open(path + ".part", "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"g": str(fps), "preset": "veryfast"}
            for t in range(frames):
                x = int((width - 1) * t / max(frames - 1, 1))
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(photo[:, x:x + width]), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(path + ".part", path)
    return paths


QUESTION = "How would you rate the overall visual quality of this image? Think first, then answer."


def random_reward(completions, **kwargs):
    """Non-constant rewards, so advantages are non-zero and the backward pass does real work."""
    return [random.random() for _ in completions]


def common_config(a, out_dir: str, vllm: bool = False) -> dict:
    forced = {"min_tokens" if vllm else "min_new_tokens": a.completion_length}  # vLLM's SamplingParams name
    return dict(
        output_dir=out_dir, max_steps=a.steps + a.warmup + (1 if a.profile_dir else 0),  # a profiled step is extra
        per_device_train_batch_size=a.micro_batch,
        gradient_accumulation_steps=(a.prompts * a.generations) // a.micro_batch, num_generations=a.generations,
        max_completion_length=a.completion_length, generation_kwargs=forced,
        beta=a.beta, gradient_checkpointing=a.gradient_checkpointing, bf16=a.dtype == "bfloat16",
        learning_rate=1e-6, logging_steps=1, save_strategy="no", report_to="none", seed=0,
        use_cpu=a.device == "cpu", disable_tqdm=True,
    )


def saved_model(a, workdir: str) -> str:
    """The random model written once (safetensors): every trainer and TRL's reference model load the same weights."""
    from .models.shapes import random_model

    path = os.path.join(workdir, "model")
    marker = os.path.join(workdir, "bench_model.json")
    wanted = {"model": a.model, "dtype": a.dtype}
    if os.path.exists(os.path.join(path, "config.json")):
        saved = json.load(open(marker)) if os.path.exists(marker) else None
        if saved != wanted:  # a reused --workdir must not silently bench another shape
            raise SystemExit(f"vqrl bench: --workdir {workdir} holds a model saved for {saved or 'an unrecorded shape'}"
                             f", not {wanted}: use another --workdir or delete {path}")
        return path
    model, processor = random_model(a.model, dtype=getattr(torch, a.dtype), device=a.device)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    with open(marker, "w") as f:
        json.dump(wanted, f)
    del model
    gc.collect()
    return path


LAUNCHED_ROW = "VQRL_BENCH_LAUNCHED_ROW"  # set by row_command for the ranks of an accelerate launch


def launched() -> bool:
    """Whether this process is one rank of the bench's own `accelerate launch` (it then runs its row, it does not
    launch again; the launch, not `device_map`, places the model). Marked explicitly: accelerate's launchers differ
    in what they set (one process without DeepSpeed sets no rank variables at all)."""
    return os.environ.get(LAUNCHED_ROW) == "1"


def processes() -> int:
    """Processes of this launch (1 outside one)."""
    return int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1


def load_model(a, path: str):
    """The saved random model, loaded after the trainer's config exists: under an accelerate DeepSpeed launch that
    config registers DeepSpeed, so ZeRO-3 partitions the weights as they load (as a user's run does); the launch,
    not `device_map`, then places them."""
    from transformers import AutoModelForImageTextToText

    placement = {} if launched() else {"device_map": a.device}
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, a.dtype),
                                                        attn_implementation="sdpa", use_safetensors=True, **placement)
    if a.freeze_vision_tower:
        model.model.visual.requires_grad_(False)
    return model


def bench_data(a, workdir: str, n_prompts: int, write: bool = True) -> tuple[str, str]:
    """(image folder, data file) of vqrl's rows: the synthetic images or videos and their records, written by one
    process (the bench's, before it launches several ranks that all read them)."""
    img_dir, data = os.path.join(workdir, "images"), os.path.join(workdir, f"bench_{n_prompts}.json")
    if not write:
        return img_dir, data
    os.makedirs(img_dir, exist_ok=True)
    records = []
    if a.video:
        width, height = (int(x) for x in a.video_size.split("x"))
        for path in synthetic_videos(n_prompts, workdir, a.video_seconds, width, height):
            records.append({"video": path, "solution": round(random.uniform(1, 5), 2), "type": "scoring_video",
                            "question": QUESTION.replace("image", "video")})
    else:
        for i, img in enumerate(synthetic_images(n_prompts, a.image_size, kind=a.image_sizes)):
            img.save(os.path.join(img_dir, f"{i}.png"))
            records.append({"image": f"{i}.png", "solution": round(random.uniform(1, 5), 2), "type": "scoring_image",
                            "question": QUESTION})
    with open(data + ".part", "w") as f:
        json.dump(records, f)
    os.replace(data + ".part", data)
    return img_dir, data


def records_needed(a) -> int:
    """Records per process: one step's prompts, or with --fresh_media one step's worth for every step the run takes
    (TRL's sampler draws an epoch without repeats, so no step meets a record, and its decoded media, again)."""
    steps = a.warmup + a.steps + (1 if a.profile_dir else 0)
    return a.prompts * (steps if a.fresh_media else 1)


def build(kind: str, a, workdir: str):
    from transformers import AutoProcessor
    from trl import GRPOConfig, GRPOTrainer

    from .training.metrics import ResourceLogger

    path = saved_model(a, workdir)
    processor = AutoProcessor.from_pretrained(path, padding_side="left")
    # each process trains on its own a.prompts prompts per step (TRL's sampler needs prompts x processes distinct
    # rows for one generation batch; with fewer it yields nothing)
    n_prompts = records_needed(a) * processes()
    if kind == "trl" and a.video:
        raise ValueError("plain TRL 1.16 drops video from its loss: --video measures vqrl's trainers only")
    if kind == "trl":
        from datasets import Dataset

        from .config import VQRLConfig
        from .data.prompts import PromptConfig, prompt_text
        from .modeling.vision import set_pixel_budgets

        # what vqrl's rows get (build_trainer): the run's pixel budget on the processor, and the same user text (the
        # question with the answer format and think instruction), so both sides process the same tokens and the
        # tokens/s ratio is the step-time ratio
        set_pixel_budgets(processor, max_pixels=a.image_size * a.image_size)
        text = prompt_text({"question": QUESTION, "type": "scoring_image"}, PromptConfig(think=VQRLConfig.think))
        ds = Dataset.from_dict({
            "prompt": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]]
            * n_prompts,
            "image": synthetic_images(n_prompts, a.image_size, kind=a.image_sizes),
        })
        cfg = GRPOConfig(**common_config(a, os.path.join(workdir, kind)))
        trainer = GRPOTrainer(model=load_model(a, path), reward_funcs=[random_reward], args=cfg, train_dataset=ds,
                              processing_class=processor)
        trainer.add_callback(ResourceLogger(cfg.output_dir))  # peak memory read the same way as ours
        return trainer
    from trl import ModelConfig

    from .config import VQRLConfig
    from .grpo import build_trainer

    img_dir, data = bench_data(a, workdir, n_prompts, write=not launched())  # a launch's parent wrote it
    trainer_name, use_vllm = TRAINERS[kind]
    vllm_options = dict(vllm_mode="colocate", vllm_gpu_memory_utilization=a.vllm_gpu_memory_utilization,
                        vllm_enable_sleep_mode=a.vllm_sleep) if use_vllm else {}
    cfg = VQRLConfig(**common_config(a, os.path.join(workdir, kind), vllm=use_vllm), trainer=trainer_name,
                     use_vllm=use_vllm, data_files=[data], image_root=[img_dir],
                     reward_funcs=["vqrl.bench:random_reward"], max_pixels=a.image_size * a.image_size,
                     video_max_frames=a.video_frames, video_root=[img_dir],
                     heartbeat=False, freeze_vision_tower=a.freeze_vision_tower,
                     checkpoint_layers=a.checkpoint_layers, vision_once=a.vision_once,
                     batch_vision_windows=a.batch_vision_windows, grouped_decode_attention=a.grouped_decode_attention,
                     compiled_generation=a.compiled_generation, **vllm_options)
    return build_trainer(cfg, ModelConfig(), model=load_model(a, path), processor=processor)


def summarize(kind: str, timer: StepTimer, a, n_params: int, tokens: int, peak: float) -> dict:
    timed = timer.steps[a.warmup:a.warmup + a.steps] or timer.steps  # not the extra, profiled step
    med = {k: statistics.median(s[k] for s in timed) for k in timed[0]}
    train_flops = 6 * n_params * tokens
    return {
        "trainer": kind, "steps_timed": len(timed), "step_s": med["step"],
        "split_s": {k: med[k] for k in (*PHASES, "backward_optimizer_other")},
        # outside the timed step: the data loader's fetch (media decoding not done ahead), logging, callbacks
        "between_steps_s": med.get("between"),
        "tokens_per_step": tokens, "tokens_per_s": tokens / med["step"], "peak_memory_gb": peak,
        "mfu": train_flops / (med["step"] * a.peak_tflops * 1e12), "all_steps_s": [s["step"] for s in timer.steps],
    }


def run_one(kind: str, a, workdir: str) -> dict:
    timer = StepTimer()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer = build(kind, a, workdir)
    instrument(trainer, timer)
    if a.profile_dir:  # one extra step after the timed ones: the profiler's overhead stays out of the timing
        profile_step(trainer, a.warmup + a.steps + 1, os.path.join(a.profile_dir, f"profile_{kind}.txt"))
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in trainer.model.parameters())  # ZeRO-3: full size
    trainer.train()
    visual = visual_tokens(trainer)  # after training: counting decodes every record, which would warm the cache
    seen = [r["num_tokens"] for r in trainer.state.log_history if "num_tokens" in r]  # TRL: prompt + completion
    tokens = int((seen[-1] - seen[a.warmup - 1]) / (len(seen) - a.warmup)) if len(seen) > a.warmup >= 1 else int(
        seen[-1] / len(seen))
    result = summarize(kind, timer, a, n_params, tokens, peak_memory_gb(trainer.args.output_dir))
    result["params"] = n_params
    n_processes = trainer.accelerator.num_processes
    result["num_processes"] = n_processes  # TRL's token count sums every process: tokens/s is the whole launch's
    result["tokens_per_s_per_gpu"] = result["tokens_per_s"] / n_processes
    result["mfu"] /= n_processes  # the tokens are every process's, the peak one GPU's
    result["deepspeed_zero_stage"] = (trainer.accelerator.state.deepspeed_plugin.zero_stage
                                      if trainer.is_deepspeed_enabled else None)
    result["vision_once"] = getattr(trainer, "vision_once", None)
    result["batched_vision_windows"] = getattr(trainer, "batched_vision_windows", None)
    result["grouped_decode_attention"] = getattr(trainer, "grouped_decode_attention", None)
    result["compiled_generation"] = trainer._compiled_generation() if hasattr(trainer, "_compiled_generation") else None
    budget = getattr(trainer, "activation_budget", None)
    if budget is not None:
        result["activation_budget"] = budget.log
    result["metrics"] = last_metrics(trainer.state.log_history, a.warmup)
    result["visual_tokens_per_prompt"] = visual
    result["fresh_media"] = bool(a.fresh_media)
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def visual_tokens(trainer) -> list[int]:
    """Visual tokens of each prompt the run trains on (what a video row must match for its image row), counted from
    the prompts as the trainer builds them (plain TRL's rows carry their image in a column beside the prompt)."""
    from .modeling.vision import encode_prompt

    processor = trainer.processing_class
    ids = {processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>")}
    counts = []
    for row in (trainer.train_dataset[i] for i in range(len(trainer.train_dataset))):
        if "image" in row:
            text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
            tokens = processor(text=[text], images=[row["image"]], return_tensors="pt")["input_ids"][0].tolist()
        else:
            tokens = encode_prompt(processor, row["prompt"])[0]
        counts.append(sum(t in ids for t in tokens))
    return counts


def peak_memory_gb(output_dir: str) -> float:
    """The run's peak allocated GPU memory, from the per-step rows every trainer here writes (ResourceLogger resets
    torch's peak counter after each step, so reading the counter after training would see only the last moments)."""
    from .training.metrics import RESOURCES_FILE

    path = os.path.join(output_dir, RESOURCES_FILE.format(rank=0))
    if not os.path.exists(path):
        return float("nan")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return max((r["peak_allocated_gb"] * 2**30 / 1e9 for r in rows if "peak_allocated_gb" in r), default=float("nan"))


def last_metrics(history: list[dict], warmup: int) -> dict:
    """Means over the timed steps of the sampling-correctness metrics (vLLM's log-prob gap, TRL's importance
    ratios) and KL, where the run logged them."""
    keys = ("vllm/", "sampling/", "kl", "activation_budget/")
    rows = [r for r in history if "step" in r and r["step"] > warmup] or history
    out = {}
    for key in sorted({k for r in rows for k in r if k.startswith(keys)}):
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if values:
            out[key] = {"mean": statistics.fmean(values), "max": max(values), "per_step": values}
    return out


def print_table(results: list[dict]) -> None:
    head = (f"{'trainer':<12}{'step s':>8}{'gen s':>7}{'sync s':>7}{'logp s':>7}{'pd s':>6}{'bwd+opt s':>10}"
            f"{'tok/s':>8}{'peak GB':>8}{'MFU':>7}")
    print(head)
    for r in results:
        s = r["split_s"]
        print(f"{r['trainer']:<12}{r['step_s']:>8.2f}{s['generate']:>7.2f}{s['weight_sync']:>7.2f}"
              f"{s['logprobs_nograd']:>7.2f}{s['pd']:>6.2f}{s['backward_optimizer_other']:>10.2f}"
              f"{r['tokens_per_s']:>8.0f}{r['peak_memory_gb']:>8.1f}{r['mfu'] * 100:>6.1f}%")
    base = next((r for r in results if r["trainer"] == "trl"), None)
    if base:
        for r in results:
            if r is not base:
                print(f"{r['trainer']}: {base['step_s'] / r['step_s']:.2f}x plain TRL by step time "
                      f"({r['tokens_per_s'] / base['tokens_per_s']:.2f}x by tokens/s)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="qwen2_5_vl_3b", help="a shape in configs/models/ or a JSON path")
    parser.add_argument("--trainers", nargs="+", default=["trl", "standard", "refine"],
                        choices=["trl", *TRAINERS], help="refine_vllm: the Refine trainer with vLLM rollouts")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per trainer")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed first steps (compilation, vLLM start-up, the activation budget's measurement)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--micro_batch", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=448, help="square images; with --image_sizes mixed, the "
                        "pixel budget is image_size^2")
    parser.add_argument("--image_sizes", choices=["square", "mixed"], default="square",
                        help="mixed: a fixed, seeded mix of real IQA sizes and aspect ratios")
    parser.add_argument("--video", type=lambda s: s.lower() in ("1", "true", "yes"), default=False,
                        help="true: vqrl's trainers on video records instead of images (plain TRL cannot train on video)")
    parser.add_argument("--fresh_media", type=lambda s: s.lower() in ("1", "true", "yes"), default=False,
                        help="every step's prompts hold images/videos no earlier step used, so no decode is served "
                             "from the media cache: the step (and between_steps_s) pays decoding as training does")
    parser.add_argument("--video_size", default="1280x720")
    parser.add_argument("--video_seconds", type=float, default=10.0)
    parser.add_argument("--video_frames", type=int, default=16, help="frames sampled per video")
    parser.add_argument("--completion_length", type=int, default=256)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--gradient_checkpointing", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    parser.add_argument("--freeze_vision_tower", type=lambda s: s.lower() in ("1", "true", "yes"), default=False,
                        help="plain TRL trains the vision tower; keep False for a like-for-like comparison")
    parser.add_argument("--checkpoint_layers", default="all",
                        help="vqrl trainers: auto | all | N (plain TRL always recomputes every layer)")
    parser.add_argument("--vision_once", default="auto", choices=["auto", "true", "false"],
                        help="vqrl trainers: encode each image/video once per log-prob forward (auto: the trainer's "
                        "default)")
    parser.add_argument("--batch_vision_windows", type=lambda s: s.lower() in ("1", "true", "yes"), default=True,
                        help="vqrl trainers: the vision tower's attention in one call per window length")
    parser.add_argument("--grouped_decode_attention", type=lambda s: s.lower() in ("1", "true", "yes"), default=True,
                        help="vqrl trainers: decode steps read the grouped-query KV cache without copying it per head")
    parser.add_argument("--compiled_generation", default="auto", choices=["auto", "true", "false"],
                        help="vqrl trainers: static-cache compiled decoding (auto: the trainer's default)")
    parser.add_argument("--vllm_gpu_memory_utilization", type=float, default=0.3)
    parser.add_argument("--vllm_sleep", type=lambda s: s.lower() in ("1", "true", "yes"), default=False,
                        help="vLLM sleep mode: frees its memory between generations (for the 7B on one GPU)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak_tflops", type=float, default=788.0, help="MFU denominator (H200 bf16, measured)")
    parser.add_argument("--workdir", default=None, help="keep the saved random model here and reuse it next time")
    parser.add_argument("--label", default=None, help="a name for this configuration in the JSON")
    parser.add_argument("--isolate", type=lambda s: s.lower() in ("1", "true", "yes"), default=True,
                        help="each trainer in its own process (several trainers; a failing one is recorded)")
    parser.add_argument("--accelerate_config", default=None,
                        help="run every row under `accelerate launch` with this config, as users launch (e.g. "
                        "configs/accelerate/zero3.yaml); plain TRL runs under the same config")
    parser.add_argument("--num_processes", type=int, default=1,
                        help="with --accelerate_config: processes (GPUs); each runs the same per-device batch")
    parser.add_argument("--profile_dir", default=None,
                        help="write a torch.profiler table of one extra step after the timed ones (profile_<row>.txt)")
    parser.add_argument("--out", default="outputs/bench.json")


@contextmanager
def _keep(path: str):
    os.makedirs(path, exist_ok=True)
    yield path


def _argv(args: argparse.Namespace, **changes) -> list[str]:
    """The command line that reproduces `args` (with changes), for running one trainer in its own process."""
    argv = []
    for key, value in {**vars(args), **changes}.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        argv += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    return argv


def row_command(kind: str, args: argparse.Namespace, workdir: str, out: str) -> list[str]:
    """The command that runs one row in its own process: `python -m vqrl.cli bench` for that trainer, under
    `accelerate launch` when --accelerate_config is given. A DeepSpeed file the config names relative to the current
    folder is looked up in the repository, as finetune_RL.sh does."""
    inner = ["-m", "vqrl.cli", "bench", *_argv(args, trainers=[kind], out=out, workdir=workdir, isolate=False,
                                                label=None)]
    if not args.accelerate_config:
        return [sys.executable, *inner]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", args.accelerate_config,
              "--num_processes", str(args.num_processes)]
    ds_json = deepspeed_file(args.accelerate_config)
    if ds_json and not os.path.isabs(ds_json) and not os.path.exists(ds_json):
        repo_json = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                 ds_json)
        if os.path.exists(repo_json):
            launch += ["--deepspeed_config_file", repo_json]
    return [*launch, *inner]


def deepspeed_file(accelerate_config: str) -> str | None:
    """The DeepSpeed JSON an accelerate config names (deepspeed_config.deepspeed_config_file), if any."""
    import yaml

    with open(accelerate_config) as f:
        config = yaml.safe_load(f) or {}
    return (config.get("deepspeed_config") or {}).get("deepspeed_config_file")


def run_isolated(kind: str, args: argparse.Namespace, workdir: str) -> dict:
    """One trainer in a fresh process (or launch): a vLLM engine or compiled graphs of an earlier row can neither
    leak memory into nor slow down the next, and peak memory is this trainer's own. A crash is recorded, not fatal."""
    import subprocess

    out = os.path.join(workdir, f"row_{kind}.json")
    env = {**os.environ, LAUNCHED_ROW: "1"} if args.accelerate_config else None
    proc = subprocess.run(row_command(kind, args, workdir, out), check=False, env=env)
    if proc.returncode != 0 or not os.path.exists(out):
        return {"trainer": kind, "error": f"exit code {proc.returncode}"}
    with open(out) as f:
        return json.load(f)["results"][0]


def run(args: argparse.Namespace) -> int:
    if args.accelerate_config and not launched():
        if not os.path.exists(args.accelerate_config):
            raise SystemExit(f"vqrl bench: --accelerate_config {args.accelerate_config}: no such file")
        if not torch.cuda.is_available():
            raise SystemExit("vqrl bench: --accelerate_config needs GPUs (accelerate starts DeepSpeed only on GPUs)")
    main = int(os.environ.get("RANK", "0")) == 0
    if args.profile_dir:  # rows run in their own processes, maybe from another folder
        args.profile_dir = os.path.abspath(args.profile_dir)
    results = []
    with (tempfile.TemporaryDirectory() if not args.workdir else _keep(args.workdir)) as workdir:
        isolated = (len(args.trainers) > 1 and args.isolate) or (args.accelerate_config and not launched())
        if isolated:
            saved_model(args, workdir)  # written once, read by every row (and every rank of a launch)
            if args.accelerate_config:
                bench_data(args, workdir, args.prompts * args.num_processes)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        for kind in args.trainers:
            if main:
                print(f"[bench] {kind} on {args.model}: {args.prompts} prompts x {args.generations} generations, "
                      f"{args.completion_length} completion tokens", file=sys.stderr, flush=True)
            results.append(run_isolated(kind, args, workdir) if isolated else run_one(kind, args, workdir))
            if main:
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    if not main:
        return 0
    results = [r for r in results if "error" not in r] + [r for r in results if "error" in r]
    for r in results:
        if "error" in r:
            print(f"[bench] {r['trainer']} FAILED: {r['error']}", file=sys.stderr)
    print_table([r for r in results if "error" not in r])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"settings": vars(args), "results": results,
                   "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}, f, indent=2)
    return 0
