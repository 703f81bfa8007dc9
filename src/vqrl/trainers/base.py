"""The base of all vqrl trainers: trl.GRPOTrainer with images AND videos in generation and in every log-prob pass.

It overrides only where TRL handles vision (prompt encoding, log-prob inputs), plus crash-safe checkpoints and the
reward kwargs. GRPO itself — advantages, KL, clipping, μ iterations, loss types — stays TRL's and must not be copied.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext

import torch
import trl.trainer.grpo_trainer as trl_grpo
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_utils import rotate_checkpoints
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

from ..modeling import vision as V
from ..modeling import grouped_decode, rope_once, vision_once, vision_windows
from ..training import checkpoints, saved_settings
from ..training.activation_budget import ActivationBudget, parse_setting
from . import trl_seam, vllm_rollouts

logger = logging.getLogger(__name__)
VISION_ONCE_ENV = "VQRL_VISION_ONCE"  # deprecated (0 / 1): --vision_once false / true
VISION_ONCE_CHOICES = ("auto", "true", "false")


def vision_once_setting(args) -> str:
    """auto | true | false: --vision_once, or where it is auto the deprecated VQRL_VISION_ONCE=1 / 0 (ValueError when
    either is malformed or they disagree)."""
    setting = str(args.vision_once).strip().lower()
    if setting not in VISION_ONCE_CHOICES:
        raise ValueError(f"--vision_once {args.vision_once}: must be auto, true or false")
    env = os.environ.get(VISION_ONCE_ENV)
    if env is None:
        return setting
    from_env = {"1": "true", "0": "false"}.get(env.strip())
    if from_env is None:
        raise ValueError(f"{VISION_ONCE_ENV}={env}: must be 1 or 0 (deprecated: use --vision_once true|false)")
    if setting not in ("auto", from_env):
        raise ValueError(f"--vision_once {setting} and {VISION_ONCE_ENV}={env} disagree: drop the environment variable "
                         "(deprecated)")
    return from_env


class EpochRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler with each epoch's shuffle a function of (seed, epoch), not of how many epochs this
    process has iterated: a run resumed in epoch e sees epoch e's order, as the uninterrupted run did."""

    epoch = 0
    prefetch = None  # callable(indices): start decoding these records' media (one-process runs)
    prefetch_ahead = 0  # how many coming indices to keep decoding ahead

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            self.generator.manual_seed((self.seed or 0) + 1_000_003 * self.epoch)
        order = super().__iter__()
        return self._prefetching(list(order)) if self.prefetch is not None and self.prefetch_ahead > 0 else order

    def _prefetching(self, order: list[int]):
        """The same order; every half window, the media of the next `prefetch_ahead` indices start decoding."""
        step = max(self.prefetch_ahead // 2, 1)
        for position, index in enumerate(order):
            if position % step == 0:
                self.prefetch(order[position:position + self.prefetch_ahead])
            yield index


class VQRLTrainer(GRPOTrainer):
    """GRPOTrainer whose per-sample vision tensors (images and videos) reach generate and all log-prob passes.

    `--vision_once auto|true|false` (auto: on; under ZeRO-3 on one process too, checked on the H200 by
    scripts/zero3_equivalence_check.py; off under ZeRO-3 on several, not yet run there): the log-prob
    passes encode each distinct image/video once per forward, and train micro-batches hold whole prompt groups where
    that cannot change the result (see `_groups_keep_result`)."""

    # What a trainer needs from the rest of vqrl, declared on its class: the entry point and the configuration checks
    # read these and never branch on a trainer's name (docs/extending.md).
    extra_columns: tuple[str, ...] = ()  # dataset columns beyond prompt and reward columns (dataset.EXTRA_COLUMNS)
    uses_vllm: bool = False  # rollouts with vLLM whatever --use_vllm says (the seed's `vllm` trainer)

    @classmethod
    def config_problems(cls, args) -> list[str]:
        """This trainer's own checks of a configuration, one line per problem (`--flag value: why`); they run with
        vqrl's other checks, before any model loads, and again when the trainer is built. A subclass adds its own to
        `super().config_problems(args)`."""
        try:
            vision_once_setting(args)
        except ValueError as exc:
            return [str(exc)]
        return []

    def __init__(self, *args, heartbeat=None, **kwargs):
        trl_seam.check_library()  # every private hook below has the signature it was written against
        problems = self.config_problems(kwargs["args"])
        if problems:
            raise ValueError("\n".join(problems))
        if self.uses_vllm:
            kwargs["args"].use_vllm = True
        if kwargs["args"].use_vllm:
            vllm_rollouts.size_context(kwargs["args"])
        super().__init__(*args, **kwargs)
        trl_seam.check_trainer(self)  # every TRL attribute read below is set
        self.vision_once = self._resolve_vision_once()
        # the policy and (with beta > 0) the reference model: both run the vision tower and M-RoPE
        forward_models = [m for m in (self.model, getattr(self, "ref_model", None)) if isinstance(m, torch.nn.Module)]
        if self.vision_once:  # the same sharing for M-RoPE positions (computed once per prompt, checked once)
            for model in forward_models:
                if (base := vision_once.base_model(model)) is not None:
                    rope_once.install(base)
        # one attention call per window length in the vision tower
        installed = [vision_windows.install(m) for m in forward_models] if self.args.batch_vision_windows else []
        self.batched_vision_windows = any(installed)
        # decode steps read the grouped-query KV cache without expanding it (HF generation; the reference model
        # never decodes)
        self.grouped_decode_attention = bool(self.args.grouped_decode_attention) and grouped_decode.install(self.model)
        self._pending_vision: list[dict] | None = None  # per-sample vision of the batch being scored/trained
        self._pending_prompt_ids: list[list[int]] | None = None
        self._pending_sample_ids: list | None = None  # dedupes prompt encoding within a generation batch
        self._pending_media: list | None = None  # (images, videos, metas) per prompt, for vLLM's requests
        self._staging_root: str | None = None
        self._logp_gap_warned: set[str] = set()  # prompt kinds whose vLLM log-prob gap was reported
        self.heartbeat = heartbeat
        self._vision_token_ids = V.vision_token_ids(self._tokenizer)
        pad = self._tokenizer.pad_token_id  # what the log-prob forward reads in place of a sampled vision token
        self._blank_token_id = pad if pad is not None else self._tokenizer.eos_token_id
        config = self.model.config
        self._image_token_id = getattr(config, "image_token_id", None)
        self._video_token_id = getattr(config, "video_token_id", None)
        # Vision tokens are sampled like any other (a completion that samples one ends with it: see
        # _end_at_vision_tokens), never suppressed: TRL scores the softmax over the whole vocabulary, so suppressing
        # them in sampling made the loss score another distribution than the one sampled, and the mass on the
        # suppressed tokens ran away under the KL and entropy terms (the KL spikes of docs/learning.md). TRL 1.16
        # suppresses the image token for HF generation by default; only a user's own suppress_tokens stay.
        if not self.use_vllm:
            users = (self.args.generation_kwargs or {}).get("suppress_tokens")
            self.generation_kwargs["suppress_tokens"] = users
            self.generation_config.suppress_tokens = users
            if self._compiled_generation():
                # TRL turns HF generate's compile path off; decoding a 3B model is launch-bound, and a static cache
                # with a CUDA-graph forward halves its time (docs/perf.md). Sampling itself is unchanged.
                logger.info("compiled generation on (static KV cache, compiled decoding step)")
                for key, value in (("cache_implementation", "static"), ("disable_compile", False)):
                    self.generation_kwargs[key] = value  # TRL also applies these to the model's own config
                    setattr(self.generation_config, key, value)
        else:
            vllm_rollouts.attach(self)
        self._max_loss_tokens = 0  # the most tokens one loss micro-batch held: sizes the activation budget
        self._max_loss_patches = 0  # the most patches the vision tower encoded for one loss micro-batch: likewise
        self.activation_budget = None
        setting = parse_setting(self.args.checkpoint_layers)
        measurable = setting != "auto" or self.accelerator.device.type == "cuda"
        if self.args.gradient_checkpointing and setting != "all" and measurable:
            self.activation_budget = ActivationBudget(self.model, setting, lambda: self._max_loss_tokens,
                                                      lambda: self._max_loss_patches)
            # first: it reads each step's peak memory before ResourceLogger resets the counters
            self.callback_handler.callbacks.insert(0, self.activation_budget)

    def _resolve_vision_once(self) -> bool:
        """--vision_once as a bool, said in the log; the deprecated environment variable, where it decided, is
        written back into the config (so the run's saved arguments say what ran)."""
        setting = vision_once_setting(self.args)
        if os.environ.get(VISION_ONCE_ENV) is not None:
            logger.warning("%s is deprecated and will be removed: use --vision_once %s", VISION_ONCE_ENV, setting)
            self.args.vision_once = setting
        if setting != "auto":
            on = setting == "true"
            logger.info("vision-once %s (--vision_once %s)", "on" if on else "off", setting)
            return on
        if is_deepspeed_zero3_enabled() and self.accelerator.num_processes > 1:
            # verified under ZeRO-3 on one GPU only (scripts/zero3_equivalence_check.py); with several ranks each
            # rank's tower calls are ZeRO-3 collectives, and that run (--nproc 2) has not been made on GPUs yet
            logger.info("vision-once off (--vision_once auto under ZeRO-3 on %d processes, not yet verified there; "
                        "--vision_once true turns it on)", self.accelerator.num_processes)
            return False
        logger.info("vision-once on (--vision_once auto)")
        return True

    def _compiled_generation(self) -> bool:
        choice = str(getattr(self.args, "compiled_generation", "false")).lower()
        if choice not in ("auto", "true", "false"):
            raise ValueError(f"compiled_generation must be auto, true or false, not {choice!r}")
        if choice == "auto":
            # Under ZeRO-3 only while TRL gathers the whole model for generation (its default): decoding then runs
            # on whole weights, as on one GPU (measured on the H200, docs/perf.md); per-layer gathers inside a
            # compiled graph were never run.
            gathered = not is_deepspeed_zero3_enabled() or getattr(self.args, "ds3_gather_for_generation", True)
            return (not self.use_vllm and self.accelerator.device.type == "cuda" and gathered
                    and not self.is_fsdp_enabled and not hasattr(self.model, "peft_config"))  # measured without these
        return choice == "true" and not self.use_vllm

    # ---- prompts -> token ids + per-sample vision tensors -------------------------------------------------------
    def _tokenize_prompts(self, prompts: list):
        """Encode each conversation with its images and videos once per record (its G completions share it);
        keep the vision tensors per sample."""
        keys = self._pending_sample_ids
        if keys is None or len(keys) != len(prompts) or None in keys:
            keys = None
        ids, per_sample, cache = [], [], {}
        for i, prompt in enumerate(prompts):
            key = keys[i] if keys else i
            if key not in cache:
                cache[key] = V.encode_prompt(self.processing_class, prompt, **self.chat_template_kwargs)
            ids.append(cache[key][0])
            per_sample.append(cache[key][1])
        self._pending_vision, self._pending_prompt_ids = per_sample, ids
        if self.use_vllm:
            self._pending_media = [V.media_of(p) for p in prompts]
        fields = V.collate(per_sample)
        if fields:  # per-token modality ids, left-padded by TRL alongside input_ids
            fields["mm_token_type_ids"] = [
                [1 if t == self._image_token_id else 2 if t == self._video_token_id else 0 for t in p] for p in ids
            ]
        # images=None keeps TRL from re-processing images for its own (image-only) forward kwargs
        return ids, None, fields

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self.use_vllm and self.vllm_mode == "server":
            images = vllm_rollouts.server_images(self._pending_media)
        vision = self._pending_vision
        vl_base = (vision_once.base_model(self.model) if self.vision_once and not self.use_vllm and vision
                   and len(vision) == len(prompt_ids) else None)
        maps = {}
        if vl_base is not None:  # the prefill encodes each distinct image/video once, not once per completion
            distinct_pixels, maps = vision_once.model_kwargs(vision, self.accelerator.device)
            multimodal_fields = {**multimodal_fields, **{k: v for k, v in distinct_pixels.items()
                                                        if k in ("pixel_values", "pixel_values_videos")}}
        with self._phase("generate"), vision_once.encode_once(vl_base, maps) if maps else nullcontext():
            completion_ids, logprobs = super()._generate_single_turn(
                prompt_ids=prompt_ids, images=images, multimodal_fields=multimodal_fields,
                num_generations=num_generations, has_tool_images=has_tool_images,
            )
        return self._end_at_vision_tokens(completion_ids, logprobs)

    def _phase(self, name: str):
        """Keep the watchdog's heartbeat fresh through a long phase (generation, saving)."""
        return self.heartbeat.phase(name, self.state.global_step) if self.heartbeat is not None else nullcontext()

    def _end_at_vision_tokens(self, completion_ids, logprobs):
        """End a completion at its first vision special token, which stays its last token (with its sampling
        log-prob): the loss scores it with the completion's advantage, so a zero-reward completion lowers that
        token's probability like any other bad choice. Cutting the completion before it, as vqrl did until
        2026-12-02, hid the token from the policy gradient while the KL and entropy terms raised it: ~10 % of the
        H200 learning check's completions ended there for 350 steps (docs/learning.md). The log-prob forward reads a
        blank in its place (V.blank_scored_vision_tokens), never a medium."""
        vision = set(self._vision_token_ids)
        ended = 0
        for i, ids in enumerate(completion_ids):
            end = V.vision_token_end(ids, vision)
            if end is not None:
                ended += 1
                completion_ids[i] = list(ids[:end])
                if logprobs is not None:
                    logprobs[i] = logprobs[i][:end]
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["completions/ended_at_vision_token"].append(ended / max(len(completion_ids), 1))
        return completion_ids, logprobs

    def _generate_and_score_completions(self, inputs):
        self._pending_sample_ids = [x.get("sample_id") for x in inputs]
        try:
            output = super()._generate_and_score_completions(inputs=inputs)
            output["vision"] = self._pending_vision
            if self.use_vllm:
                mode = "train" if self.model.training else "eval"
                gaps = vllm_rollouts.logp_gap_metrics(output, self._pending_vision, self.accelerator)
                for key, value in gaps.items():
                    self._metrics[mode][key].append(value)
                if self.accelerator.is_main_process:
                    vllm_rollouts.warn_on_logp_gap(gaps, self._logp_gap_warned)
        finally:
            self._pending_vision = self._pending_sample_ids = self._pending_media = None
        return output

    # ---- log-prob passes: TRL computes them, we supply the vision inputs per micro-batch ---------------------------
    def _compute_loss(self, model, inputs):
        self._pending_vision = inputs.get("vision")
        tokens = inputs["prompt_ids"].numel() + inputs["completion_ids"].numel()
        self._max_loss_tokens = max(self._max_loss_tokens, tokens)
        if self.activation_budget is not None:
            if self._pending_vision is not None:  # only the budget reads it
                patches = vision_once.tower_rows(self._pending_vision, once=self.vision_once)
                self._max_loss_patches = max(self._max_loss_patches, patches)
            self.activation_budget.apply()
        try:
            return super()._compute_loss(model=model, inputs=inputs)
        finally:
            self._pending_vision = None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **kwargs):
        vision = self._pending_vision
        base = GRPOTrainer._get_per_token_logps_and_entropies
        if vision is None:
            return base(self, model=self._scoring_forward(model, {}), input_ids=input_ids,
                        attention_mask=attention_mask, logits_to_keep=logits_to_keep, batch_size=batch_size,
                        compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **kwargs)
        if len(vision) != input_ids.size(0):
            raise RuntimeError(f"vision inputs for {len(vision)} samples but {input_ids.size(0)} sequences")
        step = batch_size or input_ids.size(0)
        vl_base = vision_once.base_model(model) if self.vision_once else None
        logps, entropies, aux = [], [], []
        for start in range(0, input_ids.size(0), step):
            end = min(start + step, input_ids.size(0))
            ids = input_ids[start:end]
            if vl_base is not None:  # pixels of the distinct samples only, features expanded per sequence
                extra, maps = vision_once.model_kwargs(vision[start:end], ids.device)
            else:
                extra, maps = V.collate(vision[start:end], device=ids.device), {}
            with vision_once.encode_once(vl_base, maps) if maps else nullcontext():
                lp, ent, ax = base(self, model=self._scoring_forward(model, extra), input_ids=ids,
                                   attention_mask=attention_mask[start:end], logits_to_keep=logits_to_keep,
                                   batch_size=end - start, compute_entropy=compute_entropy,
                                   compute_aux_loss=compute_aux_loss)
            logps.append(lp)
            entropies.append(ent)
            aux.append(ax)
        return (torch.cat(logps), torch.cat(entropies) if compute_entropy else None,
                torch.stack(aux).mean() if compute_aux_loss else None)

    def _scoring_forward(self, model, extra: dict):
        """`model` as TRL's log-prob pass calls it (input_ids, and labels = the scored tokens), with `extra` vision
        inputs: the completions' sampled vision tokens stay in the labels (scored) and are blanked in what the model
        reads; with vision inputs, Qwen's per-token modality ids are those of what it reads."""
        def forward(*, input_ids, labels=None, **kwargs):
            if labels is None:
                raise trl_seam.SeamError(
                    f"trl {trl_seam.versions()['trl']}'s _get_per_token_logps_and_entropies called the model without "
                    f"labels (the scored tokens), which vqrl needs to blank a completion's sampled vision token "
                    f"(written against trl {trl_seam.WRITTEN_AGAINST['trl']})")
            input_ids = V.blank_scored_vision_tokens(input_ids, labels, self._vision_token_ids, self._blank_token_id)
            if extra:
                types = V.mm_token_type_ids(input_ids, self._image_token_id, self._video_token_id)
                kwargs = {**extra, "mm_token_type_ids": types, **kwargs}
            return model(input_ids=input_ids, labels=labels, **kwargs)

        return forward

    # ---- micro-batches of whole prompt groups -------------------------------------------------------------------
    def _groups_keep_result(self) -> bool:
        """Whether grouping can change nothing but float summation order: all micro-batches of a generation batch
        fall into one optimizer step (steps_per_generation == accumulation steps) and the loss of that step is a
        sum of per-sequence terms with partition-independent normalisers (grpo, sapo, dr_grpo, dapo, cispo, vespo,
        luspo). bnpo (tokens per micro-batch), the top-entropy mask and the entropy bonus (quantile / mean per
        micro-batch) and MoE aux losses depend on the partition: those keep TRL's per-sequence shuffle."""
        accum = trl_seam.require(self, "current_gradient_accumulation_steps", owner="Trainer",
                                 when="by transformers' training loop")
        return (self.args.steps_per_generation == accum and self.loss_type != "bnpo"
                and self.top_entropy_quantile >= 1.0 and not self._entropy_bonus_enabled
                and not self.aux_loss_enabled)

    def _prepare_inputs(self, generation_batch):
        """TRL shuffles the generation batch per sequence before splitting it into micro-batches, so a micro-batch
        holds bits of many groups; where that is result-neutral, shuffle whole groups instead (same RNG draw), so
        that vision-once encodes each image once for its G sequences in the loss pass too."""
        if not (self.vision_once and self.model.training and self._groups_keep_result()):
            return super()._prepare_inputs(generation_batch=generation_batch)
        trl_shuffle = trl_grpo.shuffle_sequence_dict  # present: trl_seam.check_library checked it at start-up
        trl_grpo.shuffle_sequence_dict = vision_once.shuffle_by_group
        try:
            return super()._prepare_inputs(generation_batch=generation_batch)
        finally:
            trl_grpo.shuffle_sequence_dict = trl_shuffle

    # ---- rewards -----------------------------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """Rewards that rank across a group (fidelity_rank) need the group size: pass it as a column."""
        mode = "train" if self.model.training else "eval"
        n = self.num_generations if mode == "train" else self.num_generations_eval
        inputs = [{**x, "num_generations": n} for x in inputs]
        return super()._calculate_rewards(inputs=inputs, prompts=prompts, completions=completions,
                                          completion_ids_list=completion_ids_list)

    # ---- data order and resume ---------------------------------------------------------------------------------
    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset=dataset)
        ordered = EpochRepeatSampler(
            data_source=sampler.data_source, mini_repeat_count=sampler.mini_repeat_count,
            batch_size=sampler.batch_size, repeat_count=sampler.repeat_count, shuffle=sampler.shuffle,
            seed=sampler.seed,
        )
        builder = getattr(self, "row_builder", None)  # set by vqrl.grpo.build_trainer; absent for hand-built datasets
        if builder is not None and self.args.media_prefetch_workers > 0 and self.accelerator.num_processes == 1:
            # with several processes accelerate hands each one every n-th batch of this order; decoding the others'
            # media too would cost n times the work, so prefetching is for one-process runs only (for now)
            ordered.prefetch = builder.prefetch
            ordered.prefetch_ahead = 2 * self.args.per_device_train_batch_size * self.args.steps_per_generation
        return ordered

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Load resumed weights through from_pretrained, which maps saved key names onto the live module names
        (transformers' plain load_state_dict misses most Qwen-VL keys and only warns)."""
        model = model if model is not None else self.model
        plain = not (self.is_deepspeed_enabled or self.is_fsdp_enabled or hasattr(model, "peft_config"))
        has_weights = any(os.path.isfile(os.path.join(resume_from_checkpoint, f))
                          for f in ("model.safetensors", "model.safetensors.index.json"))
        if not (plain and has_weights):
            return super()._load_from_checkpoint(resume_from_checkpoint=resume_from_checkpoint, model=model)
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=model.dtype, use_safetensors=True)
        model.load_state_dict(saved.state_dict(), strict=True)
        del saved

    # ---- crash-safe checkpoints ----------------------------------------------------------------------------------
    def _get_output_dir(self, trial):
        return self._staging_root or super()._get_output_dir(trial=trial)

    def _save_checkpoint(self, model, trial):
        """Write into a staging folder, then rename into place and mark complete: a crash never leaves a
        checkpoint that resume could pick. Older checkpoints are rotated only after the new one is complete."""
        run_dir = super()._get_output_dir(trial=trial)
        step = self.state.global_step
        staging = os.path.join(run_dir, f"{checkpoints.STAGING_PREFIX}{step}")
        if self.args.should_save:
            checkpoints.clear_dir(staging)
        self.accelerator.wait_for_everyone()
        self._staging_root = staging
        try:
            with self._phase("save"):
                super()._save_checkpoint(model=model, trial=trial)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            staged = os.path.join(staging, f"checkpoint-{step}")
            saved_settings.write(staged, saved_settings.of_config(self.args))  # what `vqrl eval` reads by default
            checkpoints.finalize(staged, run_dir, step)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        self.accelerator.wait_for_everyone()
