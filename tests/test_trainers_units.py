"""The trainers' own steps on constructed inputs, without a model: chunking of the log-prob passes and of PD's
forwards, the sampler's prefetch settings, the vLLM log-prob gap bookkeeping, completions cut at vision tokens.

Each test calls the trainer's method on a bare instance (or a namespace standing in for one) with TRL's side faked,
so the exact chunks, values and counts the method must produce are asserted, not a model's coincidences.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

from vqrl.trainers import base as trainer_base
from vqrl.trainers import refine as refine_module
from vqrl.trainers import trl_seam
from vqrl.trainers.base import EpochRepeatSampler, VQRLTrainer
from vqrl.trainers.refine import RefineTrainer

IMAGE_TOKEN, VIDEO_TOKEN = 7, 8


def _bare(cls=VQRLTrainer, **attrs):
    """An instance of a trainer class without its __init__ (no model, no TRL set-up), with the given attributes."""
    trainer = cls.__new__(cls)
    for key, value in attrs.items():
        setattr(trainer, key, value)
    return trainer


# ---------------------------------------------------------------- log-prob passes: chunks with their own vision
def _record_base(monkeypatch):
    calls = []

    def fake_base(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
                  compute_aux_loss=False, **kwargs):
        calls.append({"model": model, "ids": input_ids.clone(), "mask": attention_mask.clone(),
                      "keep": logits_to_keep, "batch_size": batch_size, "entropy": compute_entropy,
                      "aux": compute_aux_loss, "kwargs": kwargs})
        lp = input_ids[:, -logits_to_keep:].float()
        return lp, (lp + 0.5 if compute_entropy else None), (torch.tensor(float(input_ids[0, 0])) if compute_aux_loss
                                                           else None)

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", fake_base)
    return calls


def _sequences(n: int):
    """n sequences whose first token is their index; sequence i holds image tokens when i is even."""
    ids = torch.tensor([[i, IMAGE_TOKEN if i % 2 == 0 else 3, 4, 5] for i in range(n)])
    mask = torch.ones_like(ids)
    mask[:, 0] = torch.tensor([i % 2 for i in range(n)])
    vision = [{"pixel_values": torch.full((1, 2), float(i)), "image_grid_thw": torch.tensor([[1, 1, i + 1]])}
              for i in range(n)]
    return ids, mask, vision


def _fed(call):
    """What the model of a recorded chunk receives when TRL calls it with the chunk's ids, nothing scored."""
    return call["model"](input_ids=call["ids"], labels=torch.full_like(call["ids"], -100))


def test_logps_run_chunk_by_chunk_each_with_its_own_sequences_vision(monkeypatch):
    calls = _record_base(monkeypatch)
    ids, mask, vision = _sequences(5)
    model = lambda **kw: kw  # noqa: E731 - returns what it is called with
    trainer = _bare(_pending_vision=vision, vision_once=False, _image_token_id=IMAGE_TOKEN,
                    _video_token_id=VIDEO_TOKEN, _vision_token_ids=[IMAGE_TOKEN, VIDEO_TOKEN], _blank_token_id=0)
    lp, ent, aux = trainer._get_per_token_logps_and_entropies(model, ids, mask, 2, batch_size=2,
                                                              compute_entropy=True, compute_aux_loss=True)
    assert [c["ids"][:, 0].tolist() for c in calls] == [[0, 1], [2, 3], [4]]
    assert [c["batch_size"] for c in calls] == [2, 2, 1]
    assert [c["mask"][:, 0].tolist() for c in calls] == [[0, 1], [0, 1], [0]]
    assert all(c["keep"] == 2 and c["entropy"] and c["aux"] and c["kwargs"] == {} for c in calls)
    for call, rows in zip(calls, ([0, 1], [2, 3], [4])):
        extra = _fed(call)  # what the model receives beside TRL's own arguments: this chunk's vision
        assert set(extra) == {"input_ids", "labels", "pixel_values", "image_grid_thw", "mm_token_type_ids"}
        assert torch.equal(extra["input_ids"], call["ids"])  # prompt vision tokens are read as they are
        assert extra["pixel_values"][:, 0].tolist() == [float(r) for r in rows]
        assert extra["image_grid_thw"][:, 2].tolist() == [r + 1 for r in rows]
        assert extra["mm_token_type_ids"].tolist() == [[0, 1 if r % 2 == 0 else 0, 0, 0] for r in rows]
    assert torch.equal(lp, ids[:, -2:].float())  # every sequence once, in order
    assert torch.equal(ent, ids[:, -2:].float() + 0.5)
    assert aux.item() == pytest.approx((0 + 2 + 4) / 3)  # the mean of the chunks' aux losses


def test_logps_without_batch_size_run_in_one_chunk_and_without_entropy_return_none(monkeypatch):
    calls = _record_base(monkeypatch)
    ids, mask, vision = _sequences(3)
    trainer = _bare(_pending_vision=vision, vision_once=False, _image_token_id=IMAGE_TOKEN,
                    _video_token_id=VIDEO_TOKEN)
    lp, ent, aux = trainer._get_per_token_logps_and_entropies(print, ids, mask, 1)
    assert [c["ids"][:, 0].tolist() for c in calls] == [[0, 1, 2]] and calls[0]["batch_size"] == 3
    assert lp.shape == (3, 1) and ent is None and aux is None


def test_logps_of_text_only_sequences_get_no_vision_arguments(monkeypatch):
    calls = _record_base(monkeypatch)
    ids, mask, _ = _sequences(2)
    trainer = _bare(_pending_vision=[{}, {}], vision_once=False, _image_token_id=IMAGE_TOKEN,
                    _video_token_id=VIDEO_TOKEN, _vision_token_ids=[IMAGE_TOKEN], _blank_token_id=0)
    trainer._get_per_token_logps_and_entropies(lambda **kw: kw, ids, mask, 1, batch_size=2)
    assert set(_fed(calls[0])) == {"input_ids", "labels"}  # no mm_token_type_ids without vision tensors


def test_logps_without_pending_vision_are_trls_own_call(monkeypatch):
    calls = _record_base(monkeypatch)
    ids, mask, _ = _sequences(3)
    model = lambda **kw: kw  # noqa: E731 - returns what it is called with
    trainer = _bare(_pending_vision=None, vision_once=True, _vision_token_ids=[IMAGE_TOKEN], _blank_token_id=0)
    trainer._get_per_token_logps_and_entropies(model, ids, mask, 2, batch_size=2, compute_entropy=True, extra=1)
    assert len(calls) == 1 and calls[0]["batch_size"] == 2
    assert set(_fed(calls[0])) == {"input_ids", "labels"}  # the model itself, its scored vision tokens blanked
    assert torch.equal(calls[0]["ids"], ids) and calls[0]["kwargs"] == {"extra": 1} and calls[0]["entropy"]


@pytest.mark.parametrize("pending", [None, "vision"])
def test_the_log_prob_forward_reads_a_blank_for_a_completions_sampled_vision_token(monkeypatch, pending):
    """A completion ends with the vision token it sampled: the loss scores it (labels), the model reads a blank
    there (never a medium without features), prompt vision tokens stay, and the modality ids follow what it reads."""
    calls = _record_base(monkeypatch)
    ids = torch.tensor([[1, IMAGE_TOKEN, 4, VIDEO_TOKEN], [1, IMAGE_TOKEN, 4, 5]])
    vision = [{"pixel_values": torch.ones(1, 2), "image_grid_thw": torch.tensor([[1, 1, 1]])}] * 2
    trainer = _bare(_pending_vision=vision if pending else None, vision_once=False, _image_token_id=IMAGE_TOKEN,
                    _video_token_id=VIDEO_TOKEN, _vision_token_ids=[IMAGE_TOKEN, VIDEO_TOKEN], _blank_token_id=0)
    trainer._get_per_token_logps_and_entropies(lambda **kw: kw, ids, torch.ones_like(ids), 2)
    labels = ids.clone()
    labels[:, :2] = -100  # TRL scores the completion only (the last logits_to_keep columns)
    fed = calls[0]["model"](input_ids=ids, labels=labels)
    assert fed["input_ids"].tolist() == [[1, IMAGE_TOKEN, 4, 0], [1, IMAGE_TOKEN, 4, 5]]
    assert torch.equal(fed["labels"], labels)  # the sampled vision token is still the one scored
    if pending:
        assert fed["mm_token_type_ids"].tolist() == [[0, 1, 0, 0], [0, 1, 0, 0]]


def test_a_trl_that_calls_the_model_without_labels_is_stopped_naming_the_release(monkeypatch):
    calls = _record_base(monkeypatch)
    ids, mask, _ = _sequences(2)
    trainer = _bare(_pending_vision=None, _vision_token_ids=[IMAGE_TOKEN], _blank_token_id=0)
    trainer._get_per_token_logps_and_entropies(lambda **kw: kw, ids, mask, 1)
    with pytest.raises(trl_seam.SeamError, match=r"^trl \S+'s _get_per_token_logps_and_entropies called the model "
                                                 r"without labels .* \(written against trl 1\.16\.0\)$"):
        calls[0]["model"](input_ids=ids)


def test_logps_refuse_vision_for_another_number_of_sequences(monkeypatch):
    _record_base(monkeypatch)
    ids, mask, vision = _sequences(3)
    trainer = _bare(_pending_vision=vision[:2], vision_once=False)
    with pytest.raises(RuntimeError, match=r"^vision inputs for 2 samples but 3 sequences$"):
        trainer._get_per_token_logps_and_entropies(print, ids, mask, 1)


# ---------------------------------------------------------------- the sampler: epoch order and prefetching
def _trl_sampler(monkeypatch, shuffle=True):
    made = RepeatSampler(data_source=list(range(6)), mini_repeat_count=2, batch_size=3, repeat_count=1,
                         shuffle=shuffle, seed=5)
    monkeypatch.setattr(GRPOTrainer, "_get_train_sampler", lambda self, dataset=None: made)
    return made


@pytest.mark.parametrize("builder, workers, processes, prefetching", [
    (True, 2, 1, True),
    (True, 1, 1, True),   # one worker is enough
    (True, 0, 1, False),  # no workers: nothing to prefetch with
    (True, 2, 2, False),  # several processes: each would decode the others' media too
    (False, 2, 1, False),  # a hand-built dataset has no row builder
])
def test_the_train_sampler_prefetches_only_with_workers_a_builder_and_one_process(monkeypatch, builder, workers,
                                                                                  processes, prefetching):
    made = _trl_sampler(monkeypatch)
    row_builder = SimpleNamespace(prefetch=lambda indices: None)
    trainer = _bare(args=SimpleNamespace(media_prefetch_workers=workers, per_device_train_batch_size=3,
                                         steps_per_generation=5),
                    accelerator=SimpleNamespace(num_processes=processes))
    if builder:
        trainer.row_builder = row_builder
    sampler = trainer._get_train_sampler()
    assert type(sampler) is EpochRepeatSampler
    assert (sampler.data_source, sampler.mini_repeat_count, sampler.batch_size, sampler.repeat_count,
            sampler.shuffle, sampler.seed) == (made.data_source, 2, 3, 1, True, 5)
    if prefetching:
        assert sampler.prefetch is row_builder.prefetch and sampler.prefetch_ahead == 2 * 3 * 5
    else:
        assert sampler.prefetch is None and sampler.prefetch_ahead == 0


def test_the_train_sampler_keeps_trls_unshuffled_order(monkeypatch):
    made = _trl_sampler(monkeypatch, shuffle=False)
    trainer = _bare(args=SimpleNamespace(media_prefetch_workers=0), accelerator=SimpleNamespace(num_processes=1))
    sampler = trainer._get_train_sampler()
    assert sampler.shuffle is False and list(sampler) == list(made) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_epoch_order_depends_on_the_seed_and_the_epoch_only():
    def order(seed, epoch, warm_up=0):
        sampler = EpochRepeatSampler(data_source=list(range(8)), mini_repeat_count=1, batch_size=8, shuffle=True,
                                     seed=seed)
        for _ in range(warm_up):  # iterating other epochs first must not change this one's order
            list(sampler)
        sampler.set_epoch(epoch)
        return list(sampler)

    expected = torch.randperm(8, generator=torch.Generator().manual_seed(3 + 1_000_003 * 2)).tolist()
    assert order(3, 2) == order(3, 2, warm_up=3) == expected
    assert order(None, 1) == torch.randperm(8, generator=torch.Generator().manual_seed(1_000_003)).tolist()


# ---------------------------------------------------------------- PD: forwards in fixed-size chunks, weighted sum
def test_pd_forwards_run_in_chunks_of_the_batch_size_and_count_each_call(monkeypatch):
    seen = []

    def fake_probs(model, prefixes, targets, visions, pad_id, encode_once):
        seen.append((model, list(prefixes), list(targets), list(visions), pad_id, encode_once))
        return [torch.tensor([float(p[0])]) for p in prefixes]

    monkeypatch.setattr(refine_module, "teacher_forced_probs", fake_probs)
    model = lambda **kw: None
    trainer = SimpleNamespace(args=SimpleNamespace(per_device_train_batch_size=2), model=model, pd_forward_calls=4,
                              _tokenizer=SimpleNamespace(pad_token_id=9), vision_once="once")
    prefixes = [[i, 0] for i in range(5)]
    out = RefineTrainer._forward_probs(trainer, prefixes, [f"t{i}" for i in range(5)], [f"v{i}" for i in range(5)])
    assert [float(t) for t in out] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [s[1] for s in seen] == [[[0, 0], [1, 0]], [[2, 0], [3, 0]], [[4, 0]]]
    assert [s[2] for s in seen] == [["t0", "t1"], ["t2", "t3"], ["t4"]]
    assert [s[3] for s in seen] == [["v0", "v1"], ["v2", "v3"], ["v4"]]
    assert all(s[0] is model and s[4] == 9 and s[5] == "once" for s in seen)
    assert trainer.pd_forward_calls == 4 + 3


def test_pd_weighted_probability_is_the_weighted_sum_and_zero_for_a_target_of_other_length():
    trainer = SimpleNamespace(pd_weights=(0.6, 0.0, 0.3, 0.1))
    probs = torch.tensor([0.5, 0.9, 0.2, 1.0])
    assert RefineTrainer._weighted(trainer, probs) == pytest.approx(0.6 * 0.5 + 0.3 * 0.2 + 0.1 * 1.0)
    assert type(RefineTrainer._weighted(trainer, probs)) is float
    assert RefineTrainer._weighted(trainer, torch.tensor([0.5, 0.9, 0.2])) == 0.0
    assert type(RefineTrainer._weighted(trainer, torch.tensor([0.5, 0.9, 0.2, 1.0, 1.0]))) is float


# ---------------------------------------------------------------- vLLM rollouts: the log-prob gap per batch
class _PhaseLog:
    """A heartbeat that records the phases the trainer enters, as (name, step)."""

    def __init__(self, phases: list):
        self.phases = phases

    def phase(self, name, step):
        self.phases.append((name, step))
        return contextlib.nullcontext()


class _OneProcess:
    def __init__(self, main=True):
        self.is_main_process = main

    def pad_across_processes(self, tensor, dim, pad_index):
        return tensor

    def gather(self, tensor):
        return tensor


def _vllm_output(monkeypatch, gap):
    output = {"sampling_per_token_logps": torch.zeros(2, 2), "old_per_token_logps": torch.full((2, 2), gap),
              "completion_mask": torch.ones(2, 2)}
    seen = {}

    def fake_score(self, inputs):
        seen["sample_ids"] = self._pending_sample_ids
        return dict(output)

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", fake_score)
    return seen


@pytest.mark.parametrize("training, mode", [(True, "train"), (False, "eval")])
def test_vllm_logp_gaps_are_logged_in_the_mode_of_the_batch(monkeypatch, caplog, training, mode):
    seen = _vllm_output(monkeypatch, 0.5)
    vision = [{"pixel_values": torch.ones(1)}, {}]
    trainer = _bare(use_vllm=True, model=SimpleNamespace(training=training), accelerator=_OneProcess(),
                    _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _logp_gap_warned=set(),
                    _pending_vision=vision, _pending_media=["m"])
    with caplog.at_level(logging.WARNING, logger="vqrl"):
        output = trainer._generate_and_score_completions([{"sample_id": "a"}, {"x": 1}])
    assert seen["sample_ids"] == ["a", None]
    assert output["vision"] is vision
    assert dict(trainer._metrics[mode]) == {"vllm/logp_gap_mean": [0.5], "vllm/logp_gap_p99": [0.5],
                                            "vllm/logp_gap_mean_image": [0.5], "vllm/logp_gap_p99_image": [0.5]}
    assert dict(trainer._metrics["eval" if training else "train"]) == {}
    assert trainer._logp_gap_warned == {"image"}
    assert [r.getMessage().split(" differ")[0] for r in caplog.records] == ["vLLM's log-probs on image prompts"]
    assert trainer._pending_vision is None and trainer._pending_sample_ids is None and trainer._pending_media is None


def test_vllm_logp_gap_is_said_by_the_main_process_only(monkeypatch, caplog):
    _vllm_output(monkeypatch, 0.5)
    trainer = _bare(use_vllm=True, model=SimpleNamespace(training=True), accelerator=_OneProcess(main=False),
                    _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _logp_gap_warned=set(),
                    _pending_vision=[{}, {}], _pending_media=None)
    with caplog.at_level(logging.WARNING, logger="vqrl"):
        trainer._generate_and_score_completions([{}, {}])
    assert trainer._metrics["train"]["vllm/logp_gap_mean"] == [0.5]  # every process logs the gathered metric
    assert caplog.records == [] and trainer._logp_gap_warned == set()


def test_without_vllm_no_gap_is_measured_and_pending_state_is_cleared_on_error(monkeypatch):
    _vllm_output(monkeypatch, 0.5)
    trainer = _bare(use_vllm=False, model=SimpleNamespace(training=True),
                    _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _pending_vision=[{}, {}])
    trainer._generate_and_score_completions([{}, {}])
    assert dict(trainer._metrics["train"]) == {}

    def failing(self, inputs):
        raise KeyError("boom")

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", failing)
    trainer._pending_vision, trainer._pending_media = [{}], ["m"]
    with pytest.raises(KeyError, match="boom"):
        trainer._generate_and_score_completions([{"sample_id": 1}])
    assert trainer._pending_vision is None and trainer._pending_sample_ids is None and trainer._pending_media is None


# ---------------------------------------------------------------- completions end at vision tokens
@pytest.mark.parametrize("training, mode", [(True, "train"), (False, "eval")])
def test_end_at_vision_tokens_logs_the_share_of_ended_completions(training, mode):
    trainer = _bare(_vision_token_ids=[50, 51], model=SimpleNamespace(training=training),
                    _metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    ids = [[10, 11, 50, 12], [51, 13], [14, 15], [16]]
    logprobs = [[-1.0, -2.0, -3.0, -4.0], [-5.0, -6.0], [-7.0, -8.0], [-9.0]]
    ended, ended_logprobs = trainer._end_at_vision_tokens(ids, logprobs)
    assert ended == [[10, 11, 50], [51], [14, 15], [16]]
    assert ended_logprobs == [[-1.0, -2.0, -3.0], [-5.0], [-7.0, -8.0], [-9.0]]
    assert dict(trainer._metrics[mode]) == {"completions/ended_at_vision_token": [0.5]}
    assert trainer._end_at_vision_tokens([], None) == ([], None)
    assert trainer._metrics[mode]["completions/ended_at_vision_token"] == [0.5, 0.0]


# ---------------------------------------------------------------- __init__: what it sets around TRL's own
def _init_without_trl(monkeypatch, cls, device="cpu", pad_token_id=7, **config):
    """Build `cls` with TRL's __init__ and its library checks faked; returns (trainer, what TRL's __init__ saw,
    the trainers vllm_rollouts.attach got)."""
    from vqrl.modeling import vision as V
    from vqrl.trainers import trl_seam, vllm_rollouts

    seen, attached = {}, []

    def fake_trl_init(self, *args, **kwargs):
        config = kwargs["args"]
        seen.update(use_vllm=config.use_vllm, vllm_max_model_length=config.vllm_max_model_length)
        self.args, self.use_vllm = config, config.use_vllm
        self.model = SimpleNamespace(config=SimpleNamespace(image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN))
        self._tokenizer = SimpleNamespace(eos_token_id=2, pad_token_id=pad_token_id)
        self.accelerator = SimpleNamespace(device=SimpleNamespace(type=device))
        self.generation_kwargs = {"suppress_tokens": [IMAGE_TOKEN], "top_k": 5}  # TRL suppresses the image token
        self.generation_config = SimpleNamespace(suppress_tokens=[IMAGE_TOKEN])
        self.callback_handler = SimpleNamespace(callbacks=["trl's first", "trl's second"])

    monkeypatch.setattr(GRPOTrainer, "__init__", fake_trl_init)
    monkeypatch.setattr(trl_seam, "check_library", lambda: None)
    monkeypatch.setattr(trl_seam, "check_trainer", lambda trainer: None)
    monkeypatch.setattr(V, "vision_token_ids", lambda tokenizer: [50, 51])
    monkeypatch.setattr(vllm_rollouts, "attach", attached.append)
    monkeypatch.delenv(trainer_base.VISION_ONCE_ENV, raising=False)
    monkeypatch.setattr(trainer_base, "ActivationBudget",
                        lambda model, setting, tokens, patches: SimpleNamespace(setting=setting, tokens=tokens,
                                                                                patches=patches))
    base = dict(vision_once="auto", use_vllm=False, vllm_max_model_length=None, max_prompt_length=100,
                max_completion_length=20, generation_kwargs=None, compiled_generation="false",
                checkpoint_layers="auto", gradient_checkpointing=False, batch_vision_windows=True,
                grouped_decode_attention=False)
    config_ns = SimpleNamespace(**{**base, **config})
    trainer = cls(model="m", args=config_ns)
    return trainer, seen, attached


def test_the_vllm_trainer_turns_vllm_on_and_sizes_its_context_before_trl_starts_it(monkeypatch):
    from vqrl.trainers import get_trainer

    trainer, seen, attached = _init_without_trl(monkeypatch, get_trainer("vllm"))
    assert seen == {"use_vllm": True, "vllm_max_model_length": 120}
    assert attached == [trainer]
    assert trainer.generation_kwargs == {"suppress_tokens": [IMAGE_TOKEN], "top_k": 5}  # vLLM's: left as TRL set
    assert trainer._vision_token_ids == [50, 51]
    assert trainer._blank_token_id == 7  # the pad token: what the log-prob forward reads for a sampled vision token
    assert (trainer._image_token_id, trainer._video_token_id) == (IMAGE_TOKEN, VIDEO_TOKEN)
    assert trainer.vision_once is True and trainer.activation_budget is None and trainer._max_loss_tokens == 0
    assert trainer._pending_vision is None and trainer._logp_gap_warned == set()


@pytest.mark.parametrize("users", [None, [99]])
def test_without_vllm_only_the_users_suppressed_tokens_stay(monkeypatch, users):
    from vqrl.trainers import get_trainer

    trainer, seen, attached = _init_without_trl(monkeypatch, get_trainer("standard"),
                                                generation_kwargs=None if users is None else {"suppress_tokens": users})
    assert seen == {"use_vllm": False, "vllm_max_model_length": None}  # no vLLM context sized
    assert attached == []
    assert trainer.generation_kwargs == {"suppress_tokens": users, "top_k": 5}
    assert trainer.generation_config.suppress_tokens == users


def test_without_a_pad_token_a_sampled_vision_token_is_read_as_end_of_text(monkeypatch):
    from vqrl.trainers import get_trainer

    trainer, _, _ = _init_without_trl(monkeypatch, get_trainer("standard"), pad_token_id=None)
    assert trainer._blank_token_id == 2


def test_a_bad_configuration_is_refused_before_trl_starts(monkeypatch):
    from vqrl.trainers import get_trainer

    with pytest.raises(ValueError, match=r"^--vision_once maybe: must be auto, true or false$"):
        _init_without_trl(monkeypatch, get_trainer("standard"), vision_once="maybe")


# ---------------------------------------------------------------- PD rewards: which sequences, which values
class _CharTokenizer:
    pad_token_id = 0

    @staticmethod
    def encode(text, add_special_tokens=False):
        return [ord(c) for c in text]


def _pd_trainer(monkeypatch, p_think, p_nothink, gate_values, num_generations=2, training=True):
    """A RefineTrainer without a model: prompt i is token 1000+i, its no-think prompt 2000+i; the fake forwards give
    every target token of a think prefix p_think[i], of a no-think prefix p_nothink[i] (weights: the seed's)."""
    from vqrl.trainers import refine as refine_mod

    forwards, gate_calls = [], []

    def fake_forward(prefixes, targets, visions):
        forwards.append((prefixes, targets, visions))
        trainer.pd_forward_calls += 2
        table = {1000: p_think, 2000: p_nothink}
        return [torch.full((4,), table[p[0] // 1000 * 1000][p[0] % 1000]) for p in prefixes]

    def gate_rule(completions, **columns):
        gate_calls.append(columns)
        return gate_values

    monkeypatch.setattr(refine_mod.V, "encode_prompt",
                        lambda processor, prompt, **kw: ([2000 + prompt], {"nothink_of": prompt}))
    trainer = _bare(RefineTrainer, pd_weights=(0.0, 0.0, 1.0, 0.0), _score_text=refine_mod.seed_score_text,
                    _tokenizer=_CharTokenizer(), _gate=[gate_rule], num_generations=num_generations,
                    processing_class="processor", chat_template_kwargs={}, model=SimpleNamespace(training=training),
                    accelerator=_OneProcess(), pd_forward_calls=10,
                    _metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    trainer.accelerator.device = torch.device("cpu")
    trainer._forward_probs = fake_forward
    return trainer, forwards, gate_calls


def test_pd_is_the_clamped_gain_over_each_prompts_own_no_think_probability(monkeypatch):
    p_think = [0.9, 0.3, 0.5, 0.75, 0.75, 0.2]
    p_nothink = [0.25, 0.0, 0.5, 0.0, 0.0, 0.0]  # read at the first completion of each prompt (0, 2, 4)
    gate = [1.0, 1.0, 1.0, 0.5, 1.0, 1.0]  # completion 3 fails the gate
    trainer, forwards, gate_calls = _pd_trainer(monkeypatch, p_think, p_nothink, gate)
    trainer._pending_prompt_ids = [[1000 + i] for i in range(6)]
    trainer._pending_vision = [f"vision{i}" for i in range(6)]
    completions = [f"<think>t{i}</think><answer>Score: 4.00</answer>" for i in range(6)]
    rewards = trainer._pd_rewards(completions, solution=[4.4, 4.4, 2.25, 2.25, 3.0, 3.0],
                                  prompt_nothink=[0, 0, 2, 2, 4, 4], sample_id=["a", "a", "b", "b", "c", "c"],
                                  num_generations=2, log_metric="x", log_extra="y")
    assert rewards == pytest.approx([0.9 - 0.25, 0.3 - 0.25, 0.0, 0.0, 0.75, 0.2])
    (think, think_targets, think_visions), (nothink, nothink_targets, nothink_visions) = forwards
    prefix = [ord(c) for c in "<answer>Score: "]
    assert think == [[1000 + i] + [ord(c) for c in f"<think>t{i}</think>"] + prefix for i in range(6)]
    assert think_targets == [[ord(c) for c in s] for s in ["4.40", "4.40", "2.25", "2.25", "3.00", "3.00"]]
    assert think_visions == [f"vision{i}" for i in range(6)]
    # one no-think forward per prompt, padded to ceil(6 / 2) + 1 = 4 slots with the last prompt again
    assert nothink == [[2000 + i] + prefix for i in (0, 2, 4, 4)]
    assert nothink_targets == [[ord(c) for c in s] for s in ["4.40", "2.25", "3.00", "3.00"]]
    assert nothink_visions == [{"nothink_of": i} for i in (0, 2, 4, 4)]
    assert gate_calls == [{"solution": [4.4, 4.4, 2.25, 2.25, 3.0, 3.0], "sample_id": ["a", "a", "b", "b", "c", "c"],
                           "num_generations": 2}]  # the logging hooks are not passed to the gate's own run
    metrics = trainer._metrics["train"]
    assert metrics["refine/p_think"] == [pytest.approx(sum(p_think) / 6)]
    assert metrics["refine/p_nothink"] == [pytest.approx((0.25 * 2 + 0.5 * 2 + 0.0 * 2) / 6)]
    assert metrics["refine/frac_earning_pd"] == [pytest.approx(5 / 6)]
    assert metrics["refine/pd_forward_calls"] == [4.0]
    assert len(metrics["refine/pd_seconds"]) == 1 and 0 <= metrics["refine/pd_seconds"][0] < 60
    assert dict(trainer._metrics["eval"]) == {}


def test_pd_with_more_prompts_than_slots_reads_every_prompt_once_in_eval_mode(monkeypatch):
    trainer, forwards, _ = _pd_trainer(monkeypatch, [0.5, 0.5, 0.5, 1.0], [0.75, 0.0, 0.5, 0.125], [1.0] * 4,
                                       training=False)
    trainer.pd_weights = (0.0, 0.0, 2.0, 0.0)  # a gain above 1 is clamped to 1
    trainer._pending_prompt_ids = [[1000 + i] for i in range(4)]
    trainer._pending_vision = [{}] * 4
    rewards = trainer._pd_rewards(["<think>x</think>"] * 4, solution=[3.0] * 4, prompt_nothink=[0, 1, 2, 3],
                                  sample_id=["a", "b", "c", "d"])
    assert [p[0] for p in forwards[1][0]] == [2000, 2001, 2002, 2003]  # 4 prompts > min(4, ceil(4 / 2) + 1) = 3
    assert rewards == pytest.approx([0.0, 1.0, 0.0, 1.0])
    assert trainer._metrics["eval"]["refine/p_nothink"] == [pytest.approx(2 * (0.75 + 0.0 + 0.5 + 0.125) / 4)]
    assert dict(trainer._metrics["train"]) == {}


def test_pd_gate_needs_every_rule_in_full():
    rules = [lambda completions, **kw: [1.0, 1.0, 0.99, 1.0], lambda completions, **kw: [1.0, 0.0, 1.0, 1.5]]
    trainer = SimpleNamespace(_gate=rules)
    assert RefineTrainer._passes_gate(trainer, ["c"] * 4, {}) == [True, False, False, True]


# ---------------------------------------------------------------- whole-group micro-batches: when, and undone after
@pytest.mark.parametrize("change, keeps", [
    ({}, True),
    ({"steps_per_generation": 4}, False),  # micro-batches of one generation batch fall into two optimizer steps
    ({"loss_type": "bnpo"}, False),
    ({"loss_type": "dr_grpo"}, True),
    ({"top_entropy_quantile": 0.99}, False),
    ({"_entropy_bonus_enabled": True}, False),
    ({"aux_loss_enabled": True}, False),
])
def test_groups_keep_result_only_for_partition_independent_steps(change, keeps):
    attrs = dict(current_gradient_accumulation_steps=2, loss_type="dapo", top_entropy_quantile=1.0,
                 _entropy_bonus_enabled=False, aux_loss_enabled=False)
    steps = change.pop("steps_per_generation", 2)
    attrs.update(change)
    trainer = _bare(args=SimpleNamespace(steps_per_generation=steps), **attrs)
    assert trainer._groups_keep_result() is keeps


@pytest.mark.parametrize("vision_once, training, keeps, grouped", [
    (True, True, True, True), (False, True, True, False), (True, False, True, False), (True, True, False, False)])
def test_prepare_inputs_shuffles_whole_groups_only_where_it_keeps_the_result(monkeypatch, vision_once, training,
                                                                             keeps, grouped):
    import trl.trainer.grpo_trainer as trl_grpo

    from vqrl.modeling import vision_once as vision_once_module

    trl_shuffle = trl_grpo.shuffle_sequence_dict
    seen = []
    monkeypatch.setattr(GRPOTrainer, "_prepare_inputs",
                        lambda self, generation_batch: seen.append(trl_grpo.shuffle_sequence_dict) or "micro")
    monkeypatch.setattr(VQRLTrainer, "_groups_keep_result", lambda self: keeps)
    trainer = _bare(vision_once=vision_once, model=SimpleNamespace(training=training))
    assert trainer._prepare_inputs({"batch": 1}) == "micro"
    assert seen == [vision_once_module.shuffle_by_group if grouped else trl_shuffle]
    assert trl_grpo.shuffle_sequence_dict is trl_shuffle  # TRL's own shuffle is back after the call


# ---------------------------------------------------------------- the loss pass: its vision, its size
def test_compute_loss_hands_the_micro_batchs_vision_to_the_log_prob_pass_and_records_its_size(monkeypatch):
    during = []
    monkeypatch.setattr(GRPOTrainer, "_compute_loss",
                        lambda self, model, inputs: during.append(self._pending_vision) or torch.tensor(1.5))
    applied = []
    trainer = _bare(_pending_vision=None, _max_loss_tokens=0, _max_loss_patches=0, vision_once=True,
                    activation_budget=SimpleNamespace(
                        apply=lambda: applied.append((trainer._max_loss_tokens, trainer._max_loss_patches))))
    shared, other = {"pixel_values": torch.ones(4, 3)}, {"pixel_values_videos": torch.ones(6, 3)}
    vision = [shared, shared, other]  # two sequences share one image: encoded once under vision-once
    small = {"vision": vision, "prompt_ids": torch.zeros(2, 3), "completion_ids": torch.zeros(2, 4)}
    big = {"prompt_ids": torch.zeros(3, 5), "completion_ids": torch.zeros(3, 5)}
    assert trainer._compute_loss("model", small).item() == 1.5
    assert during == [vision] and trainer._pending_vision is None and trainer._max_loss_tokens == 14
    trainer._compute_loss("model", big)
    assert trainer._max_loss_tokens == 30
    trainer._compute_loss("model", small)
    assert trainer._max_loss_tokens == 30  # the most any micro-batch held
    assert applied == [(14, 10), (30, 10), (30, 10)]
    assert during == [vision, None, vision]
    trainer.vision_once = False  # every sequence's media through the tower
    trainer._compute_loss("model", small)
    assert trainer._max_loss_patches == 14


# ---------------------------------------------------------------- resumed weights
class _FakeModel:
    dtype = torch.bfloat16
    loaded = []

    @classmethod
    def from_pretrained(cls, path, dtype, use_safetensors):
        cls.loaded.append((path, dtype, use_safetensors))
        return SimpleNamespace(state_dict=lambda: {"w": torch.ones(1)})

    def load_state_dict(self, state, strict):
        self.state = (state, strict)


@pytest.mark.parametrize("weights, deepspeed, fsdp, peft, ours", [
    ("model.safetensors", False, False, False, True),
    ("model.safetensors.index.json", False, False, False, True),
    ("pytorch_model.bin", False, False, False, False),
    ("model.safetensors", True, False, False, False),
    ("model.safetensors", False, True, False, False),
    ("model.safetensors", False, False, True, False),
])
def test_resumed_weights_go_through_from_pretrained_for_plain_safetensors_checkpoints(monkeypatch, tmp_path, weights,
                                                                                     deepspeed, fsdp, peft, ours):
    (tmp_path / weights).write_text("x")
    trls = []
    monkeypatch.setattr(GRPOTrainer, "_load_from_checkpoint",
                        lambda self, resume_from_checkpoint, model=None: trls.append((resume_from_checkpoint, model)))
    _FakeModel.loaded = []
    model = _FakeModel()
    if peft:
        model.peft_config = {}
    trainer = _bare(model=model, is_deepspeed_enabled=deepspeed, is_fsdp_enabled=fsdp)
    trainer._load_from_checkpoint(str(tmp_path))
    if ours:
        assert _FakeModel.loaded == [(str(tmp_path), torch.bfloat16, True)] and trls == []
        assert set(model.state[0]) == {"w"} and model.state[1] is True
    else:
        assert _FakeModel.loaded == [] and trls == [(str(tmp_path), model)]
    other = _FakeModel()
    if peft:
        other.peft_config = {}
    trainer._load_from_checkpoint(str(tmp_path), model=other)  # a model given is the one loaded into
    assert (hasattr(other, "state") if ours else trls[-1] == (str(tmp_path), other))


# ---------------------------------------------------------------- prompts encoded once per record
def _encoding(monkeypatch):
    from vqrl.modeling import vision as V

    calls = []

    def fake_encode(processor, prompt, **kwargs):
        calls.append((prompt, kwargs))
        return [1, IMAGE_TOKEN, VIDEO_TOKEN, 100 + prompt], {"pixel_values": torch.full((1, 2), float(prompt))}

    monkeypatch.setattr(V, "encode_prompt", fake_encode)
    monkeypatch.setattr(V, "media_of", lambda prompt: (["image", prompt], [], []))
    return calls


@pytest.mark.parametrize("sample_ids, encoded", [
    (["a", "a", "b", "b"], [0, 2]),  # a record's completions share one encoding
    (["a", None, "b", "b"], [0, 1, 2, 3]),  # an unknown id: every prompt its own
    (["a", "a", "b"], [0, 1, 2, 3]),  # ids of another batch
    (None, [0, 1, 2, 3]),
])
def test_prompts_are_encoded_once_per_record_with_modality_ids_per_token(monkeypatch, sample_ids, encoded):
    calls = _encoding(monkeypatch)
    trainer = _bare(_pending_sample_ids=sample_ids, processing_class="processor", chat_template_kwargs={"t": 1},
                    use_vllm=False, _pending_media=None, _image_token_id=IMAGE_TOKEN, _video_token_id=VIDEO_TOKEN)
    prompts = [0, 1, 2, 3]
    ids, images, fields = trainer._tokenize_prompts(prompts)
    assert calls == [(p, {"t": 1}) for p in encoded]
    first = {0: 0, 1: 0, 2: 2, 3: 2} if encoded == [0, 2] else {p: p for p in prompts}
    assert ids == [[1, IMAGE_TOKEN, VIDEO_TOKEN, 100 + first[p]] for p in prompts] and images is None
    assert fields["pixel_values"][:, 0].tolist() == [float(first[p]) for p in prompts]
    assert fields["mm_token_type_ids"] == [[0, 1, 2, 0]] * 4
    assert trainer._pending_prompt_ids == ids
    assert [d["pixel_values"][0, 0].item() for d in trainer._pending_vision] == [float(first[p]) for p in prompts]
    assert (trainer._pending_vision[0] is trainer._pending_vision[1]) == (encoded == [0, 2])  # shared: vision-once
    assert trainer._pending_media is None  # media for vLLM's requests only


def test_prompts_for_vllm_keep_their_media(monkeypatch):
    _encoding(monkeypatch)
    trainer = _bare(_pending_sample_ids=None, processing_class="processor", chat_template_kwargs={}, use_vllm=True,
                    _image_token_id=IMAGE_TOKEN, _video_token_id=VIDEO_TOKEN)
    trainer._tokenize_prompts([5, 6])
    assert trainer._pending_media == [(["image", 5], [], []), (["image", 6], [], [])]


def test_text_only_prompts_get_no_modality_ids(monkeypatch):
    from vqrl.modeling import vision as V

    monkeypatch.setattr(V, "encode_prompt", lambda processor, prompt, **kw: ([1, 2], {}))
    trainer = _bare(_pending_sample_ids=None, processing_class="p", chat_template_kwargs={}, use_vllm=False,
                    _image_token_id=IMAGE_TOKEN, _video_token_id=VIDEO_TOKEN)
    assert trainer._tokenize_prompts([0, 1]) == ([[1, 2], [1, 2]], None, {})


# ---------------------------------------------------------------- crash-safe checkpoints: the order of the steps
@pytest.mark.parametrize("should_save", [True, False])
def test_a_checkpoint_is_written_into_staging_then_finalized_then_older_ones_rotated(monkeypatch, tmp_path,
                                                                                      should_save):
    from vqrl.training import checkpoints, saved_settings

    events = []
    run_dir = str(tmp_path / "run")
    staging = f"{run_dir}/{checkpoints.STAGING_PREFIX}7"
    monkeypatch.setattr(GRPOTrainer, "_get_output_dir", lambda self, trial: run_dir)

    def fake_save(self, model, trial):
        events.append(("save", model, trial, self._get_output_dir(trial), phases[-1]))

    phases = []


    monkeypatch.setattr(GRPOTrainer, "_save_checkpoint", fake_save)
    monkeypatch.setattr(checkpoints, "clear_dir", lambda path: events.append(("clear", path)))
    monkeypatch.setattr(checkpoints, "finalize", lambda staged, run, step: events.append(("finalize", staged, run, step)))
    monkeypatch.setattr(saved_settings, "of_config", lambda config: {"of": config.tag})
    monkeypatch.setattr(saved_settings, "write", lambda path, settings: events.append(("settings", path, settings)))
    monkeypatch.setattr(trainer_base, "rotate_checkpoints", lambda **kw: events.append(("rotate", kw)))
    trainer = _bare(args=SimpleNamespace(should_save=should_save, save_total_limit=2, tag="cfg"),
                    state=SimpleNamespace(global_step=7, best_model_checkpoint="best"), _staging_root=None,
                    heartbeat=_PhaseLog(phases), accelerator=SimpleNamespace(
                        wait_for_everyone=lambda: events.append(("wait",))))
    trainer._save_checkpoint("model", "trial")
    saved = ("save", "model", "trial", staging, ("save", 7))
    if should_save:
        assert events == [
            ("clear", staging), ("wait",), saved, ("wait",),
            ("settings", f"{staging}/checkpoint-7", {"of": "cfg"}),
            ("finalize", f"{staging}/checkpoint-7", run_dir, 7),
            ("rotate", {"output_dir": run_dir, "save_total_limit": 2, "best_model_checkpoint": "best",
                        "use_mtime": False}),
            ("wait",)]
    else:  # another rank: it writes its shards into the same staging folder and waits with the others
        assert events == [("wait",), saved, ("wait",), ("wait",)]
    assert trainer._staging_root is None and trainer._get_output_dir("trial") == run_dir


def test_a_failed_save_leaves_no_staging_root_behind(monkeypatch, tmp_path):
    from vqrl.training import checkpoints

    def failing(self, model, trial):
        raise OSError("disk full")

    monkeypatch.setattr(GRPOTrainer, "_get_output_dir", lambda self, trial: str(tmp_path))
    monkeypatch.setattr(GRPOTrainer, "_save_checkpoint", failing)
    monkeypatch.setattr(checkpoints, "finalize", lambda *a: pytest.fail("finalized a failed save"))
    trainer = _bare(args=SimpleNamespace(should_save=True), state=SimpleNamespace(global_step=1), _staging_root=None,
                    heartbeat=None, accelerator=SimpleNamespace(wait_for_everyone=lambda: None))
    with pytest.raises(OSError, match="disk full"):
        trainer._save_checkpoint("model", None)
    assert trainer._staging_root is None


@pytest.mark.parametrize("checkpointing, layers, device, budget", [
    (True, "2", "cpu", 2),  # a number of layers is applied on any device
    (True, "0", "cpu", 0),
    (True, "auto", "cpu", None),  # auto is measured: CUDA only
    (True, "auto", "cuda", "auto"),
    (True, "all", "cuda", None),  # every layer checkpointed: nothing to budget
    (False, "2", "cuda", None),
])
def test_the_activation_budget_runs_first_where_checkpointing_leaves_something_to_decide(monkeypatch, checkpointing,
                                                                                        layers, device, budget):
    from vqrl.trainers import get_trainer

    trainer, _, _ = _init_without_trl(monkeypatch, get_trainer("standard"), device=device,
                                      gradient_checkpointing=checkpointing, checkpoint_layers=layers)
    callbacks = trainer.callback_handler.callbacks
    if budget is None:
        assert trainer.activation_budget is None and callbacks == ["trl's first", "trl's second"]
    else:
        assert callbacks[0] is trainer.activation_budget and callbacks[1:] == ["trl's first", "trl's second"]
        trainer._max_loss_tokens, trainer._max_loss_patches = 77, 5
        assert trainer.activation_budget.setting == budget and trainer.activation_budget.tokens() == 77
        assert trainer.activation_budget.patches() == 5


# ---------------------------------------------------------------- generation: vision-once prefill, server images
def _generation(monkeypatch, **attrs):
    from vqrl.modeling import vision_once as vision_once_module

    seen, entered = [], []
    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn",
                        lambda self, **kw: seen.append(kw) or ([[1, 50, 2], [3]], [[-1.0, -2.0, -3.0], [-4.0]]))
    monkeypatch.setattr(vision_once_module, "base_model", lambda model: "vl-base")
    monkeypatch.setattr(vision_once_module, "model_kwargs", lambda vision, device: (
        {"pixel_values": "distinct", "image_grid_thw": "grids", "pixel_values_videos": "distinct videos"},
        {"get_image_features": "map"}))

    import contextlib

    @contextlib.contextmanager
    def fake_encode_once(base, maps):
        entered.append((base, maps))
        yield

    monkeypatch.setattr(vision_once_module, "encode_once", fake_encode_once)
    defaults = dict(vision_once=True, use_vllm=False, vllm_mode="colocate", model="model", heartbeat=None,
                    accelerator=SimpleNamespace(device="cpu"), _vision_token_ids=[50],
                    _tokenizer=SimpleNamespace(eos_token_id=2), _metrics={"train": defaultdict(list)},
                    _pending_media=None, _pending_vision=[{"pixel_values": 1}, {"pixel_values": 1}])
    defaults["model"] = SimpleNamespace(training=True)
    trainer = _bare(**{**defaults, **attrs})
    return trainer, seen, entered


def test_generation_prefills_distinct_pixels_once_and_ends_at_vision_tokens(monkeypatch):
    trainer, seen, entered = _generation(monkeypatch)
    out = trainer._generate_single_turn([[7], [8]], None, {"pixel_values": "per sequence", "other": 1}, 2)
    assert seen == [{"prompt_ids": [[7], [8]], "images": None, "num_generations": 2, "has_tool_images": False,
                     "multimodal_fields": {"pixel_values": "distinct", "other": 1,
                                           "pixel_values_videos": "distinct videos"}}]
    assert entered == [("vl-base", {"get_image_features": "map"})]
    assert out == ([[1, 50], [3]], [[-1.0, -2.0], [-4.0]])
    assert trainer._metrics["train"]["completions/ended_at_vision_token"] == [0.5]


@pytest.mark.parametrize("attrs", [
    {"vision_once": False},
    {"_pending_vision": None},
    {"_pending_vision": []},
    {"_pending_vision": [{"pixel_values": 1}]},  # vision of another batch: plain generation
])
def test_generation_without_vision_once_is_trls_own(monkeypatch, attrs):
    trainer, seen, entered = _generation(monkeypatch, **attrs)
    trainer._generate_single_turn([[7], [8]], None, {"pixel_values": "per sequence"}, 2)
    assert seen[0]["multimodal_fields"] == {"pixel_values": "per sequence"} and entered == []


def test_vllm_server_generation_sends_each_prompts_images(monkeypatch):
    trainer, seen, entered = _generation(monkeypatch, use_vllm=True, vllm_mode="server",
                                         _pending_media=[(["img"], [], []), ([], [], [])])
    trainer._generate_single_turn([[7], [8]], "trl's images", {}, 2)
    assert seen[0]["images"] == [["img"], None] and entered == []
    trainer, seen, _ = _generation(monkeypatch, use_vllm=True, vllm_mode="colocate")
    trainer._generate_single_turn([[7], [8]], "trl's images", {}, 2)
    assert seen[0]["images"] == "trl's images"


def test_generation_keeps_the_watchdogs_heartbeat_fresh(monkeypatch):
    phases = []


    trainer, seen, _ = _generation(monkeypatch, heartbeat=_PhaseLog(phases), state=SimpleNamespace(global_step=12))
    trainer._generate_single_turn([[7], [8]], None, {}, 2)
    assert phases == [("generate", 12)] and len(seen) == 1


# ---------------------------------------------------------------- Refine: its configuration and the seed's shaping
def _refine_config(**overrides):
    values = dict(pd_mode="seed", pd_weights=None, pd_gate=["format", "answer"], vision_once="auto",
                  answer_threshold=None, answer_strict_less=None, gauss_sigma=None, reward_kwargs=None)
    values.update(overrides)
    return SimpleNamespace(**values)


@pytest.mark.parametrize("overrides, problems", [
    ({}, []),
    ({"pd_mode": "paper", "pd_weights": [1, 0, "0.5", 0]}, []),
    ({"pd_weights": [1, 0, 0, float("nan")]}, ["--pd_weights 1 0 0 nan: give 4 finite weights, one per score token "
                                                "(d . d d)"]),
    ({"pd_weights": [1, 0, 0, 0, 0]}, ["--pd_weights 1 0 0 0 0: give 4 finite weights, one per score token (d . d d)"]),
    ({"pd_mode": "both", "pd_gate": []}, ["--pd_mode both: must be one of seed, paper",
                                          "--pd_gate: must name at least one rule reward (e.g. format answer)"]),
    ({"pd_gate": ["format", "nope"]}, ["--pd_gate format nope: unknown reward 'nope': use one of format, "]),
    ({"vision_once": "x"}, ["--vision_once x: must be auto, true or false"]),
])
def test_refine_configuration_problems_are_each_named(monkeypatch, overrides, problems):
    monkeypatch.delenv(trainer_base.VISION_ONCE_ENV, raising=False)
    got = RefineTrainer.config_problems(_refine_config(**overrides))
    assert len(got) == len(problems) and all(g.startswith(p) for g, p in zip(got, problems)), got


def test_seed_advantages_are_this_processs_slice_of_the_weighted_gathered_rewards():
    nan = float("nan")
    per_func = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, nan], [0.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    trainer = SimpleNamespace(_gathered_rewards=per_func, reward_weights=torch.tensor([1.0, 2.0]),
                              model=SimpleNamespace(training=True), num_generations=2, num_generations_eval=3,
                              accelerator=SimpleNamespace(process_index=1))
    rewards = torch.tensor([3.0, 2.0, 1.0, 0.0, 1.5, 1.5])  # weighted sums, NaN (a reward not applying) as 0
    whole = refine_module.seed_advantages(rewards, 2)
    assert torch.equal(RefineTrainer._seed_advantages_local(trainer, 2), whole[2:4])
    trainer.model.training = False  # evaluation: groups of num_generations_eval
    assert torch.equal(RefineTrainer._seed_advantages_local(trainer, 3), refine_module.seed_advantages(rewards, 3)[3:6])
    trainer._gathered_rewards = None
    with pytest.raises(RuntimeError, match=r"^pd_advantage_shaping: TRL did not score this batch through "
                                           r"_calculate_rewards \(written against trl 1.16\)"):
        RefineTrainer._seed_advantages_local(trainer, 2)


@pytest.mark.parametrize("shaping", [True, False])
def test_refine_replaces_trls_advantages_only_with_shaping(monkeypatch, shaping):
    from vqrl.trainers.base import VQRLTrainer as Base

    def fake(self, inputs):
        assert self._gathered_rewards is None  # a previous batch's rewards are never reused
        return {"advantages": torch.zeros(2, dtype=torch.float64), "other": 1}

    monkeypatch.setattr(Base, "_generate_and_score_completions", fake)
    trainer = _bare(RefineTrainer, args=SimpleNamespace(pd_advantage_shaping=shaping), _gathered_rewards="old")
    trainer._seed_advantages_local = lambda n: torch.tensor([0.5, -0.25][:n])
    out = trainer._generate_and_score_completions([{}, {}])
    assert out["other"] == 1 and out["advantages"].dtype == torch.float64
    assert out["advantages"].tolist() == ([0.5, -0.25] if shaping else [0.0, 0.0])


def test_refine_keeps_the_gathered_rewards_trl_computed(monkeypatch):
    from vqrl.trainers.base import VQRLTrainer as Base

    monkeypatch.setattr(Base, "_calculate_rewards", lambda self, inputs, prompts, completions, completion_ids_list:
                        torch.ones(2, 3))
    trainer = _bare(RefineTrainer, _gathered_rewards=None)
    out = trainer._calculate_rewards([{}], ["p"], ["c"], [[1]])
    assert trainer._gathered_rewards is out and out.shape == (2, 3)


def _refine_init(monkeypatch, tokenizer_pieces=4, **overrides):
    from vqrl.trainers.base import VQRLTrainer as Base

    seen = {}

    class Tokenizer:
        @staticmethod
        def encode(text, add_special_tokens=False):
            return list(range(tokenizer_pieces))

    def fake_base_init(self, *args, **kwargs):
        seen.update(kwargs)
        self._tokenizer = Tokenizer()

    monkeypatch.setattr(Base, "__init__", fake_base_init)
    monkeypatch.delenv(trainer_base.VISION_ONCE_ENV, raising=False)
    config = _refine_config(**{"reward_weights": None, **overrides})
    return RefineTrainer(model="m", reward_funcs=("format", "answer"), args=config), seen, config


def test_refine_adds_pd_as_the_last_reward_with_weight_one(monkeypatch):
    trainer, seen, config = _refine_init(monkeypatch, reward_weights=[2.0, 0.5])
    assert seen["reward_funcs"][:2] == ["format", "answer"] and seen["reward_funcs"][2].__name__ == "pd"
    assert config.reward_weights == [2.0, 0.5, 1.0]
    assert trainer.pd_weights == (0.0, 0.0, 1.0, 0.0) and trainer._score_text is refine_module.seed_score_text
    assert [f.__name__ for f in trainer._gate] == ["format", "answer"]
    assert trainer.pd_forward_calls == 0 and trainer._gathered_rewards is None
    trainer._pd_rewards = lambda completions, **kw: ["pd of", completions, kw]
    assert seen["reward_funcs"][2](["c"], solution=[1]) == ["pd of", ["c"], {"solution": [1]}]


def test_refine_paper_mode_and_own_weights(monkeypatch):
    from vqrl.data.prompts import format_score

    trainer, _, config = _refine_init(monkeypatch, pd_mode="paper")
    assert trainer.pd_weights == (0.6, 0.0, 0.3, 0.1) and trainer._score_text is format_score
    assert config.reward_weights is None  # TRL's default: every reward weight 1
    trainer, _, _ = _refine_init(monkeypatch, pd_weights=["1", 0, 2.5, 0])
    assert trainer.pd_weights == (1.0, 0.0, 2.5, 0.0) and all(type(w) is float for w in trainer.pd_weights)


def test_refine_refuses_a_tokenizer_that_splits_scores_otherwise(monkeypatch):
    with pytest.raises(ValueError, match=r"^PD needs a tokenizer that writes a score d\.dd as 4 tokens \(Qwen's digits "
                                         r"are one token each\); this one gives 3 for '1\.23'$"):
        _refine_init(monkeypatch, tokenizer_pieces=3)


def test_refine_refuses_a_bad_configuration_before_the_base_trainer_starts(monkeypatch):
    with pytest.raises(ValueError, match=r"^--pd_mode x: must be one of seed, paper$"):
        _refine_init(monkeypatch, pd_mode="x")


# ---------------------------------------------------------------- vLLM log-prob gap: percentile and threshold
def test_logp_gap_p99_is_the_value_at_99_percent_of_the_sorted_tokens():
    from vqrl.trainers.vllm_rollouts import logp_gap_metrics

    gaps = torch.arange(101, dtype=torch.float32).flip(0)[None]  # 100, 99, ..., 0 on one text-only completion
    metrics = logp_gap_metrics({"sampling_per_token_logps": torch.zeros(1, 101), "old_per_token_logps": gaps,
                                "completion_mask": torch.ones(1, 101)}, None, _OneProcess())
    assert metrics == {"vllm/logp_gap_mean": 50.0, "vllm/logp_gap_p99": 99.0}  # index int(0.99 * 100) of 0..100


def test_a_logp_gap_at_the_threshold_is_numerics_above_it_a_warning(caplog):
    from vqrl.trainers.vllm_rollouts import LOGP_GAP_WARN, warn_on_logp_gap

    warned: set[str] = set()
    with caplog.at_level(logging.WARNING, logger="vqrl"):
        warn_on_logp_gap({"vllm/logp_gap_mean": LOGP_GAP_WARN, "vllm/logp_gap_mean_image": LOGP_GAP_WARN}, warned)
        assert caplog.records == [] and warned == set()
        warn_on_logp_gap({"vllm/logp_gap_mean": 0.5, "vllm/logp_gap_mean_video": 0.05}, warned)
        assert caplog.records == [] and warned == set()  # the overall mean holds video prompts: judged by kind
        warn_on_logp_gap({"vllm/logp_gap_mean": 0.5, "vllm/logp_gap_mean_image": 0.11}, warned)
    assert warned == {"image"} and len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith("vLLM's log-probs on image prompts differ from the trained "
                                                     "policy's by 0.11 nats per token on average")
    assert LOGP_GAP_WARN == 0.1


# ---------------------------------------------------------------- --vision_once and its deprecated variable
@pytest.mark.parametrize("flag, env, result", [
    ("auto", "1", "true"), ("auto", "0", "false"), ("TRUE ", None, "true"), ("true", "1", "true"), ("auto", None, "auto"),
])
def test_vision_once_setting(monkeypatch, flag, env, result):
    if env is None:
        monkeypatch.delenv(trainer_base.VISION_ONCE_ENV, raising=False)
    else:
        monkeypatch.setenv(trainer_base.VISION_ONCE_ENV, env)
    assert trainer_base.vision_once_setting(SimpleNamespace(vision_once=flag)) == result


@pytest.mark.parametrize("flag, env, message", [
    ("maybe", None, "--vision_once maybe: must be auto, true or false"),
    ("auto", "yes", "VQRL_VISION_ONCE=yes: must be 1 or 0 (deprecated: use --vision_once true|false)"),
    ("false", "1", "--vision_once false and VQRL_VISION_ONCE=1 disagree: drop the environment variable (deprecated)"),
])
def test_vision_once_setting_refusals(monkeypatch, flag, env, message):
    if env is None:
        monkeypatch.delenv(trainer_base.VISION_ONCE_ENV, raising=False)
    else:
        monkeypatch.setenv(trainer_base.VISION_ONCE_ENV, env)
    with pytest.raises(ValueError) as err:
        trainer_base.vision_once_setting(SimpleNamespace(vision_once=flag))
    assert str(err.value) == message
    assert VQRLTrainer.config_problems(SimpleNamespace(vision_once=flag)) == [message]


def test_the_deprecated_variable_is_written_back_into_the_config_with_a_warning(monkeypatch, caplog):
    monkeypatch.setenv(trainer_base.VISION_ONCE_ENV, "0")
    trainer = _bare(args=SimpleNamespace(vision_once="auto"))
    with caplog.at_level(logging.INFO, logger=trainer_base.logger.name):
        assert trainer._resolve_vision_once() is False
    assert trainer.args.vision_once == "false"
    assert [r.getMessage() for r in caplog.records] == [
        "VQRL_VISION_ONCE is deprecated and will be removed: use --vision_once false",
        "vision-once off (--vision_once false)"]


def test_compiled_generation_sets_a_static_cache_and_compiled_decoding(monkeypatch, caplog):
    from vqrl.trainers import get_trainer

    with caplog.at_level(logging.INFO, logger=trainer_base.logger.name):
        trainer, _, _ = _init_without_trl(monkeypatch, get_trainer("standard"), compiled_generation="true")
    assert trainer.generation_kwargs == {"suppress_tokens": None, "top_k": 5, "cache_implementation": "static",
                                         "disable_compile": False}
    assert (trainer.generation_config.cache_implementation, trainer.generation_config.disable_compile) == ("static",
                                                                                                          False)
    assert "compiled generation on (static KV cache, compiled decoding step)" in [r.getMessage() for r in
                                                                                  caplog.records]
    plain, _, _ = _init_without_trl(monkeypatch, get_trainer("standard"))
    assert "cache_implementation" not in plain.generation_kwargs
    assert not hasattr(plain.generation_config, "cache_implementation")


def test_vision_once_auto_is_on_and_says_so(monkeypatch, caplog):
    monkeypatch.delenv(trainer_base.VISION_ONCE_ENV, raising=False)
    trainer = _bare(args=SimpleNamespace(vision_once="auto"), accelerator=SimpleNamespace(num_processes=1))
    with caplog.at_level(logging.INFO, logger=trainer_base.logger.name):
        assert trainer._resolve_vision_once() is True
    assert [r.getMessage() for r in caplog.records] == ["vision-once on (--vision_once auto)"]
    assert trainer.args.vision_once == "auto"


@pytest.mark.parametrize("ahead, windows", [
    (0, []),  # a prefetch function with nothing to keep ahead is never called
    (1, [[0], [1], [2], [3]]),  # half a window of one is one: every index
    (3, [[0, 1, 2], [1, 2, 3], [2, 3], [3]]),
    (4, [[0, 1, 2, 3], [2, 3]]),
])
def test_prefetch_windows_start_every_half_window(ahead, windows):
    sampler = EpochRepeatSampler(data_source=list(range(4)), mini_repeat_count=1, batch_size=4, shuffle=False)
    calls = []
    sampler.prefetch, sampler.prefetch_ahead = calls.append, ahead
    assert list(sampler) == [0, 1, 2, 3]
    assert calls == windows


def test_logp_gaps_are_padded_along_the_tokens_to_other_ranks_longer_completions():
    """Another rank's completions may be longer: this rank's gaps are padded with NaN along the token dimension
    (never along the sequences, which must stay paired with their prompt kinds) and the padding never counts."""
    from vqrl.trainers.vllm_rollouts import logp_gap_metrics

    class LongerElsewhere(_OneProcess):
        def pad_across_processes(self, tensor, dim, pad_index):
            width = list(tensor.shape)
            width[dim] = 6
            padded = torch.full(width, pad_index, dtype=tensor.dtype)
            padded.narrow(dim, 0, tensor.shape[dim]).copy_(tensor)
            return padded

    output = {"sampling_per_token_logps": torch.zeros(2, 2), "old_per_token_logps": torch.tensor([[0.2, 0.4],
                                                                                                  [1.0, 3.0]]),
              "completion_mask": torch.ones(2, 2)}
    metrics = logp_gap_metrics(output, [{"pixel_values": 1}, {"pixel_values_videos": 1}], LongerElsewhere())
    assert metrics == pytest.approx({"vllm/logp_gap_mean": 1.15, "vllm/logp_gap_p99": 1.0,
                                     "vllm/logp_gap_mean_image": 0.3, "vllm/logp_gap_p99_image": 0.2,
                                     "vllm/logp_gap_mean_video": 2.0, "vllm/logp_gap_p99_video": 1.0})
