"""Every place vqrl touches TRL's or transformers' internals, with the signature it was written against, checked at
start-up: a release that changes one stops the run before any model loads, naming the hook and both versions, rather
than training silently wrong. docs/trl_hooks.md is the same list for whoever upgrades TRL (a test keeps them equal).

It only inspects: it must not patch anything, import vLLM, or accept a changed hook as "probably fine".
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

# The releases this seam was written and tested against (pyproject.toml allows trl 1.16.x, transformers 5.16.1-5.19).
WRITTEN_AGAINST = {"trl": "1.16.0", "transformers": "5.17.0"}


class SeamError(RuntimeError):
    """TRL or transformers changed something vqrl relies on: pin the release vqrl was written against, or update
    vqrl (docs/trl_hooks.md says where each hook is used)."""


@dataclass(frozen=True)
class Hook:
    """A method of trl.GRPOTrainer (or one it inherits from transformers.Trainer) that vqrl overrides or calls."""

    name: str
    signature: str  # its parameters as written against, annotations left out
    library: str  # "trl" or "transformers": the one that defines it
    use: str  # what vqrl does with it


@dataclass(frozen=True)
class Function:
    """A library function or class vqrl calls, or (replaced=True) swaps for the span of one call."""

    module: str
    name: str  # dotted within the module: `RepeatSampler.__init__`
    signature: str
    use: str
    replaced: bool = False


HOOKS = (
    Hook("_tokenize_prompts", "(self, prompts)", "trl",
         "override: encode each record's images and videos once, keep each sample's vision tensors"),
    Hook("_generate_single_turn",
         "(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False)", "trl",
         "override + keyword super call: vision-once prefill, completions end at a sampled vision token"),
    Hook("_generate_and_score_completions", "(self, inputs)", "trl",
         "override + keyword super call: sample ids in, per-sample vision out; Refine's seed advantages"),
    Hook("_compute_loss", "(self, model, inputs)", "trl",
         "override + keyword super call: the micro-batch's vision tensors for the loss forward"),
    Hook("_get_per_token_logps_and_entropies",
         "(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, "
         "compute_aux_loss=False, pixel_values=None, image_grid_thw=None, num_images=None, pixel_attention_mask=None, "
         "spatial_shapes=None, num_tiles=None, image_sizes=None, token_type_ids=None, mm_token_type_ids=None, "
         "image_position_ids=None)", "trl",
         "override + keyword call of TRL's own per chunk: images AND videos in every log-prob pass; the model it "
         "calls (input_ids, labels = the scored tokens) reads a blank for a completion's sampled vision token"),
    Hook("_prepare_inputs", "(self, generation_batch)", "trl",
         "override: swaps shuffle_sequence_dict for shuffle_by_group in TRL's call (micro-batches of whole groups)"),
    Hook("_calculate_rewards", "(self, inputs, prompts, completions, completion_ids_list)", "trl",
         "override: passes num_generations to rewards; Refine keeps the gathered rewards"),
    Hook("_get_train_sampler", "(self, dataset=None)", "trl",
         "override: TRL's RepeatSampler, re-seeded per epoch (resume sees the same order)"),
    Hook("_save_checkpoint", "(self, model, trial)", "trl",
         "override: staged checkpoint, renamed into place, then rotated"),
    Hook("_get_output_dir", "(self, trial)", "transformers", "override: points the save into the staging folder"),
    Hook("_load_from_checkpoint", "(self, resume_from_checkpoint, model=None)", "transformers",
         "override: plain models resume through from_pretrained (key names mapped)"),
    Hook("set_initial_training_values", "(self, args, dataloader)", "transformers",
         "called by grpo.planned_steps: the run's total steps (7 values, max_steps last)"),
)

FUNCTIONS = (
    Function("trl.trainer.grpo_trainer", "shuffle_sequence_dict", "(seq_dict)",
             "the module global TRL's _prepare_inputs calls; replaced in that call by vision_once.shuffle_by_group",
             replaced=True),
    Function("trl.trainer.utils", "RepeatSampler.__init__",
             "(self, data_source, mini_repeat_count, batch_size=1, repeat_count=1, shuffle=True, seed=None)",
             "subclassed by EpochRepeatSampler (reads .generator, .seed, .shuffle)"),
    Function("trl.trainer.utils", "maybe_gather_lm_head_ctx", "(*params)",
             "teacher forcing gathers the LM head under ZeRO-3 as TRL's fused log-prob pass does"),
    Function("transformers.trainer_utils", "rotate_checkpoints",
             "(output_dir, save_total_limit=None, best_model_checkpoint=None, use_mtime=False, "
             "checkpoint_prefix='checkpoint')", "called after a checkpoint is complete"),
)

# Attributes a trainer reads from TRL's GRPOTrainer after its __init__ (checked then, so a rename fails at start-up,
# never as a silently changed default later).
ATTRIBUTES = ("_tokenizer", "processing_class", "chat_template_kwargs", "num_generations", "num_generations_eval", "reward_weights", "loss_type", "top_entropy_quantile",
              "_entropy_bonus_enabled", "aux_loss_enabled", "use_vllm", "vllm_mode", "_metrics", "_step",
              "_buffered_inputs", "is_deepspeed_enabled", "is_fsdp_enabled", "callback_handler")
# With HF generation (TRL sets these only then): the sampling settings the base trainer extends.
HF_GENERATION_ATTRIBUTES = ("generation_kwargs", "generation_config")
# With vLLM rollouts: TRL's VLLMGeneration and what vllm_rollouts.attach changes on it.
VLLM_ATTRIBUTES = ("vllm_generation",)
VLLM_GENERATION_ATTRIBUTES = {"colocate": ("llm",), "server": ()}


def signature_text(func) -> str:
    """A callable's parameters (names, kinds, defaults; annotations left out), through decorators."""
    sig = inspect.signature(inspect.unwrap(func))
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def versions() -> dict[str, str]:
    import transformers
    import trl

    return {"trl": trl.__version__, "transformers": transformers.__version__}


def _release(library: str, installed: dict[str, str]) -> str:
    return f"{library} {installed[library]} (vqrl was written against {library} {WRITTEN_AGAINST[library]})"


def _resolve(module: str, name: str):
    import importlib

    target = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    return target


def library_problems() -> list[str]:
    """One line per hook or function whose signature differs from what vqrl was written against (or that is gone),
    each naming the installed release and the fix. Empty: the seam holds."""
    from trl import GRPOTrainer

    installed = versions()
    fix = "pin that release or update vqrl (docs/trl_hooks.md)"
    out = []
    for hook in HOOKS:
        method = getattr(GRPOTrainer, hook.name, None)
        if method is None:
            out.append(f"{_release(hook.library, installed)}: GRPOTrainer.{hook.name} no longer exists; vqrl uses it "
                       f"to {hook.use}: {fix}")
            continue
        now = signature_text(method)
        if now != hook.signature:
            out.append(f"{_release(hook.library, installed)}: GRPOTrainer.{hook.name} changed: it is now {now}, vqrl "
                       f"was written against {hook.signature} ({hook.use}): {fix}")
    for func in FUNCTIONS:
        library = func.module.split(".")[0]
        try:
            now = signature_text(_resolve(func.module, func.name))
        except (ImportError, AttributeError):
            out.append(f"{_release(library, installed)}: {func.module}.{func.name} no longer exists ({func.use}): "
                       f"{fix}")
            continue
        if now != func.signature:
            out.append(f"{_release(library, installed)}: {func.module}.{func.name} changed: it is now {now}, vqrl was "
                       f"written against {func.signature} ({func.use}): {fix}")
    code = getattr(inspect.unwrap(getattr(GRPOTrainer, "_prepare_inputs", None)), "__code__", None)
    if code is None or "shuffle_sequence_dict" not in code.co_names:
        out.append(f"{_release('trl', installed)}: GRPOTrainer._prepare_inputs no longer calls the module global "
                   f"shuffle_sequence_dict, so vision-once could not group micro-batches: {fix}")
    return out


_checked = False


def check_library() -> None:
    """Raise SeamError listing every changed hook (once per process; the result cannot change within one)."""
    global _checked
    if _checked:
        return
    problems = library_problems()
    if problems:
        raise SeamError("\n".join(problems))
    _checked = True


def check_trainer(trainer) -> None:
    """After GRPOTrainer.__init__: every attribute vqrl reads is there (SeamError naming the first missing one)."""
    names = ATTRIBUTES + (VLLM_ATTRIBUTES if trainer.use_vllm else HF_GENERATION_ATTRIBUTES)
    for name in names:
        require(trainer, name)
    if trainer.use_vllm:
        for name in VLLM_GENERATION_ATTRIBUTES[trainer.vllm_mode]:
            require(trainer.vllm_generation, name, owner="GRPOTrainer.vllm_generation")


def require(obj, name: str, owner: str = "GRPOTrainer", when: str = "after GRPOTrainer.__init__"):
    """obj.name, or SeamError naming the attribute and the release: never a default in its place."""
    try:
        return getattr(obj, name)
    except AttributeError:
        raise SeamError(f"{_release('trl', versions())}: {owner}.{name} is not set {when}; vqrl reads it: pin that "
                        "release or update vqrl (docs/trl_hooks.md)") from None


def markdown_table() -> str:
    """The hooks as docs/trl_hooks.md shows them (a test keeps the page equal to this list)."""
    lines = ["| where | signature written against | what vqrl does with it |", "|---|---|---|"]
    lines += [f"| `GRPOTrainer.{h.name}` ({h.library}) | `{h.signature}` | {h.use} |" for h in HOOKS]
    lines += [f"| `{f.module}.{f.name}` | `{f.signature}` | {f.use} |" for f in FUNCTIONS]
    return "\n".join(lines)
