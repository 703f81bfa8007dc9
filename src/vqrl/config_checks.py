"""Checks of a training configuration that need no model: each mistake a user can make in flags, a recipe or the
launch environment becomes one line naming the flag and the cause, before any model loads (exit 2, never retried).

It reads flags, small files and folder listings only: it must not load weights, decode media or touch the network.
"""

from __future__ import annotations

import contextlib
import logging
import importlib.util
import json
import os
import re
import tempfile
from dataclasses import fields

from .data.records import to_float
from .training import checkpoints
from .training.activation_budget import parse_setting

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration mistake the user must fix; the run would fail the same way on every retry."""


def check_config(args, model_args) -> None:
    """Raise ConfigError listing every problem found (one line each); return quietly when there is none."""
    problems = []
    for check in (_libraries, _trainer, _rewards_and_weights, _batch, _data, _vision, _run_control, _model,
                  _integrations, _peft):
        problems += check(args, model_args)
    if problems:
        raise ConfigError("\n".join(problems))


@contextlib.contextmanager
def as_config_error(what: str):
    """Turn a ValueError raised while building something from flags (rewards, ...) into a ConfigError."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"{what}: {exc}") from exc


def resume_setting(args) -> str | None:
    """What to resume from, as --resume says it (auto | PATH | none): --resume; else TRL's standard
    --resume_from_checkpoint, read as --resume (true -> auto, false -> none); else the watchdog's VQRL_RESUME. Both
    flags with different values is a ConfigError."""
    trl_value = getattr(args, "resume_from_checkpoint", None)
    if trl_value is not None and str(trl_value).strip():
        mapped = {"true": "auto", "false": "none"}.get(str(trl_value).strip().lower(), str(trl_value))
        if args.resume is not None and args.resume != mapped:
            raise ConfigError(f"--resume_from_checkpoint {trl_value} and --resume {args.resume} disagree: give one "
                              "(--resume auto|PATH|none is vqrl's; TRL's flag is read as it)")
        return mapped
    return args.resume or os.environ.get(checkpoints.RESUME_ENV)


def resolve_resume(resume: str | None, output_dir: str, deepspeed: bool = False) -> str | None:
    """checkpoints.resolve_resume with its refusals as ConfigErrors. A checkpoint without optimizer state
    (--save_only_model) resumes its weights with a fresh optimizer, except under DeepSpeed, whose resume reads its own
    optimizer shards: that is refused with the way out (a new run from the checkpoint's weights)."""
    try:
        checkpoint = checkpoints.resolve_resume(resume, output_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    if checkpoint and not checkpoints.has_optimizer_state(checkpoint):
        if deepspeed:
            raise ConfigError(f"{checkpoint} holds no optimizer state (written with --save_only_model), and a "
                              "DeepSpeed run resumes only from its own optimizer shards: start a new run from its "
                              f"weights (--model_name_or_path {checkpoint} --resume none, new --output_dir)")
        logger.warning("%s holds no optimizer state (written with --save_only_model): resuming its weights, data "
                       "order and step with a fresh optimizer and learning-rate schedule", checkpoint)
    return checkpoint


def uses_deepspeed(args) -> bool:
    """DeepSpeed from --deepspeed or from an accelerate config (what finetune_RL.sh launches with)."""
    return bool(getattr(args, "deepspeed", None)) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def normalise_lists(cfg, own: set[str]) -> None:
    """A recipe's scalar where one of vqrl's list options is expected (`reward_funcs: format`) means a one-element
    list, not its characters: argparse applies `nargs` to the command line only, never to a YAML value. Only vqrl's
    own fields: TRL gives some of its own (lora_target_modules) a meaning as a single string."""
    for f in fields(cfg):
        value = getattr(cfg, f.name, None)
        if f.name in own and "list[" in str(f.type).lower() and isinstance(value, (str, int, float)) \
                and not isinstance(value, bool):
            setattr(cfg, f.name, [value])


# ---------------------------------------------------------------------------------------------------- the checks


def _libraries(args, model_args) -> list[str]:
    """The TRL and transformers internals vqrl's trainers rely on, as written against (trainers/trl_seam.py)."""
    from .trainers import trl_seam

    return trl_seam.library_problems()


def _trainer(args, model_args) -> list[str]:
    """The trainer's name, what it declares it needs (vLLM), its own checks (trainer.config_problems), and the
    generation options every trainer shares."""
    from .trainers import get_trainer

    out = []
    try:
        trainer_cls = get_trainer(args.trainer)
    except ValueError as exc:
        out.append(f"--trainer {args.trainer}: {exc}")
        trainer_cls = None
    if trainer_cls is not None:
        if (trainer_cls.uses_vllm or args.use_vllm) and importlib.util.find_spec("vllm") is None:
            out.append(f"--{f'trainer {args.trainer}' if trainer_cls.uses_vllm else 'use_vllm true'}: vLLM is not "
                       "installed (pip install -r requirements_VLLM.txt)")
        out += trainer_cls.config_problems(args)
    if args.compiled_generation is None or str(args.compiled_generation).lower() not in ("auto", "true", "false"):
        out.append(f"--compiled_generation {args.compiled_generation}: must be auto, true or false")
    try:
        parse_setting(args.checkpoint_layers)
    except ValueError:
        out.append(f"--checkpoint_layers {args.checkpoint_layers}: must be all, auto or a number of layers")
    return out


def _rewards_and_weights(args, model_args) -> list[str]:
    out = []
    weights = args.reward_weights
    if weights is not None:
        if len(weights) != len(args.reward_funcs):
            out.append(f"--reward_weights {_show(weights)}: {len(weights)} weight(s) for {len(args.reward_funcs)} "
                       f"reward(s) ({' '.join(map(str, args.reward_funcs))}); give one per reward")
        elif not all(map(_finite, weights)):
            out.append(f"--reward_weights {_show(weights)}: every weight must be a finite number")
    if not args.think:
        needs_think = [r for r in args.reward_funcs if r in ("format", "format_strict")]
        if needs_think:
            out.append(f"--think false asks for answers without <think>, but reward {needs_think[0]} requires "
                       "<think>...</think>: use format_nothink")
    return out


def _batch(args, model_args) -> list[str]:
    out = []
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_completion_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            out.append(f"--{name} {value}: must be at least 1")
    if args.max_prompt_length is not None and args.max_prompt_length < 1:
        out.append(f"--max_prompt_length {args.max_prompt_length}: must be at least 1 (or unset: no limit)")
    if args.max_steps <= 0 and not args.num_train_epochs > 0:
        out.append(f"--max_steps {args.max_steps} and --num_train_epochs {args.num_train_epochs}: nothing to train")
    if not (_finite(args.learning_rate) and args.learning_rate >= 0):
        out.append(f"--learning_rate {args.learning_rate}: must be a finite number >= 0")
    return out


def _data(args, model_args) -> list[str]:
    from .data.records import roots_per_file

    out = []
    files = list(args.data_files or [])
    if not files:
        return ["--data_files: no data file given"]
    for path in files:
        if not os.path.exists(path):
            out.append(f"--data_files {path}: no such file")
        elif not os.path.isfile(path):
            out.append(f"--data_files {path}: not a file")
        elif not os.access(path, os.R_OK):
            out.append(f"--data_files {path}: not readable")
    for what in ("image_root", "video_root"):
        roots = getattr(args, what)
        try:
            roots_per_file(roots, len(files), what)
        except ValueError as exc:
            out.append(f"--{what} {_show(roots)}: {exc}")
            continue
        for root in [roots] if isinstance(roots, str) else roots or []:
            if root is not None and not os.path.isdir(root):
                out.append(f"--{what} {root}: no such folder")
    weights = args.data_weights
    if weights is not None:
        if len(weights) != len(files):
            out.append(f"--data_weights {_show(weights)}: {len(weights)} weight(s) for {len(files)} data file(s); "
                       "give one per file")
        elif not all(_finite(w) and w >= 0 for w in weights):
            out.append(f"--data_weights {_show(weights)}: every weight must be a finite number >= 0")
        elif not any(w > 0 for w in weights):
            out.append(f"--data_weights {_show(weights)}: all zero, nothing to train on")
    if args.on_bad_sample not in ("error", "skip"):
        out.append(f"--on_bad_sample {args.on_bad_sample}: must be error or skip")
    return out


def _vision(args, model_args) -> list[str]:
    out = []
    for name in ("min_pixels", "max_pixels", "video_max_pixels", "video_total_pixels"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            out.append(f"--{name} {value}: must be a positive number of pixels (e.g. 802816 = 1024 x 28 x 28), "
                       "or unset for the processor's own")
    if args.min_pixels and args.min_pixels > 0:
        for name in ("max_pixels", "video_max_pixels"):
            value = getattr(args, name)
            if value and 0 < value < args.min_pixels:
                out.append(f"--{name} {value} is below --min_pixels {args.min_pixels}")
    if args.media_prefetch_workers < 0:
        out.append(f"--media_prefetch_workers {args.media_prefetch_workers}: must be 0 (off) or a number of threads")
    if not (_finite(args.video_fps) and args.video_fps > 0):
        out.append(f"--video_fps {args.video_fps}: must be a positive number of frames per second")
    if args.video_max_frames < 2:  # the same rule as data.media.VisionSpec, checked here before any model loads
        out.append(f"--video_max_frames {args.video_max_frames}: must be at least 2 (Qwen-VL encodes video frames "
                   "in pairs)")
    return out


def _run_control(args, model_args) -> list[str]:
    out = []
    try:
        checkpoints.resolve_resume(resume_setting(args), args.output_dir)
    except (FileNotFoundError, ValueError) as exc:  # ConfigError included
        trl_flag = args.resume is None and getattr(args, "resume_from_checkpoint", None)
        out.append(str(exc).replace("--resume ", "--resume_from_checkpoint ", 1) if trl_flag else str(exc))
    if args.progress not in ("bar", "logs"):
        out.append(f"--progress {args.progress}: must be bar or logs")
    problem = _unwritable(args.output_dir)
    if problem:
        out.append(f"--output_dir {args.output_dir}: {problem}")
    return out


def _integrations(args, model_args) -> list[str]:
    out = []
    if model_args.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        out.append("--attn_implementation flash_attention_2: flash-attn is not installed (pip install flash-attn, "
                   "or use sdpa, the default)")
    wanted = [r for r in (args.report_to or []) if r not in ("none", "all")]
    if wanted:
        from transformers.integrations import get_available_reporting_integrations

        available = set(get_available_reporting_integrations())
        missing = [r for r in wanted if r not in available]
        if missing:
            out.append(f"--report_to {' '.join(missing)}: not installed (pip install {' '.join(missing)}, or "
                       "--report_to none)")
    return out


def _peft(args, model_args) -> list[str]:
    """LoRA target modules the model does not have (PEFT would say so only after loading the weights): checked on the
    model built from its config on the meta device, which allocates nothing."""
    targets = model_args.lora_target_modules
    path = os.path.expanduser(model_args.model_name_or_path or "")
    if not (model_args.use_peft and targets and targets != "all-linear"
            and os.path.isfile(os.path.join(path, "config.json"))):
        return []
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=args.trust_remote_code)
        with torch.device("meta"):
            names = [n for n, _ in AutoModelForImageTextToText.from_config(config).named_modules() if n]
    except Exception:  # noqa: BLE001 - the model check above reports an unusable folder; this one only adds to it
        return []
    if isinstance(targets, str):  # PEFT: one string is a regular expression over the full module names
        missing = [] if any(re.fullmatch(targets, n) for n in names) else [targets]
    else:  # a list: module names, matched as name suffixes
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if not missing:
        return []
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names if "proj" in n.rsplit(".", 1)[-1]})
    return [f"--lora_target_modules {' '.join(missing)}: no such module in this model (it has e.g. "
            f"{', '.join(leaves[:8])})"]


# ---------------------------------------------------------------------------------------------------- the model

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def _model(args, model_args) -> list[str]:
    path = model_args.model_name_or_path
    if not path:
        return []  # the embedded tiny model, built on first use
    flag = f"--model_name_or_path {path}"
    local = os.path.expanduser(path)
    if os.path.isdir(local):
        return [f"{flag}: {p}" for p in model_folder_problems(local, args.trust_remote_code)]
    if os.path.exists(local):
        return [f"{flag}: is a file, not a model folder"]
    if _looks_local(path):
        return [f"{flag}: no such model folder"]
    if any(os.environ.get(name, "0") not in ("0", "") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path, "config.json"), str):
            return [f"{flag}: not a local folder, and not in the Hugging Face cache (offline mode is on)"]
    return []  # a hub id: from_pretrained downloads it


def model_folder_problems(folder: str, trust_remote_code: bool = False) -> list[str]:
    """What keeps `folder` from loading as a vision-language model with its processor, in safetensors."""
    names = set(os.listdir(folder))
    if "config.json" not in names:
        if "adapter_config.json" in names:
            return [] if "adapter_model.safetensors" in names else [
                "PEFT adapter folder without adapter_model.safetensors"]
        return ["no config.json: not a saved model (save_pretrained writes one)"]
    out = []
    if not any(n in names for n in WEIGHT_FILES):
        torch_only = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth")))
        if torch_only:
            out.append(f"has only PyTorch weights ({torch_only[0]}): vqrl loads safetensors only; re-save with "
                       "save_pretrained(..., safe_serialization=True)")
        else:
            out.append("has no weights (model.safetensors or model.safetensors.index.json)")
    elif "model.safetensors.index.json" in names and "model.safetensors" not in names:
        try:
            with open(os.path.join(folder, "model.safetensors.index.json")) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            out.append(f"model.safetensors.index.json is unreadable ({exc})")
        else:
            missing = [s for s in shards if s not in names]
            if missing:
                out.append(f"weight shard {missing[0]} listed in model.safetensors.index.json is missing "
                           f"({len(missing)} of {len(shards)} missing)")
            else:
                out += [p for s in shards if (p := safetensors_problem(os.path.join(folder, s)))]
    else:
        out += [p for n in ("model.safetensors", "adapter_model.safetensors") if n in names
                and (p := safetensors_problem(os.path.join(folder, n)))]
    if not any(n in names for n in TOKENIZER_FILES):
        out.append("has no tokenizer (tokenizer.json); save the processor with the model")
    if not any(n in names for n in PROCESSOR_FILES):
        out.append("has no image processor (processor_config.json or preprocessor_config.json); save the processor "
                   "with the model")
    kind = _model_kind(folder, trust_remote_code)
    if kind:
        out.append(kind)
    return out


def safetensors_problem(path: str) -> str | None:
    """Why a .safetensors file cannot be whole (cut short by an interrupted copy or download), from its header
    alone: 8 bytes of header length, a JSON header, then data up to the largest tensor end offset."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < n <= size - 8:
                return f"{name} is not a safetensors file or is cut short ({size} bytes)"
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        return f"{name} has an unreadable safetensors header ({exc})"
    if 8 + n + end > size:
        return f"{name} is cut short: {size:,} bytes of {8 + n + end:,} (an interrupted copy or download?)"
    return None


def _model_kind(folder: str, trust_remote_code: bool) -> str | None:
    """None when config.json describes an image-text-to-text model transformers knows, else why not."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        return f"config.json cannot be read ({str(exc).splitlines()[0]})"
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and not trust_remote_code:
        return (f"is a {model_type!r} model, not a vision-language model vqrl can train "
                "(Qwen2-VL, Qwen2.5-VL, Qwen3-VL)")
    return None


def _looks_local(path: str) -> bool:
    """A path the user meant as a folder rather than a hub id `namespace/name`."""
    if path.startswith(("/", "./", "../", "~", ".\\")) or os.sep != "/" and os.sep in path:
        return True
    parts = path.split("/")
    return len(parts) != 2 or any(p in ("", ".", "..") for p in parts) or os.path.isdir(parts[0])


# ---------------------------------------------------------------------------------------------------- helpers


def _unwritable(output_dir: str) -> str | None:
    """Why files cannot be written in output_dir (created if missing), or None."""
    if not output_dir:
        return "empty"
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        return "exists and is not a folder"
    try:
        os.makedirs(output_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".vqrl-write-test-", dir=output_dir)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        return f"cannot be written ({exc.strerror or exc})"
    return None


def _finite(value) -> bool:
    return to_float(value) is not None  # the one number rule (data.records.to_float): flags and records alike


def _show(values) -> str:
    return " ".join(map(str, values)) if isinstance(values, (list, tuple)) else str(values)
