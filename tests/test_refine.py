"""The Refine trainer: PD's gate, weights, targets and think prefix on constructed probabilities; PD on the real model
against a direct forward; no gradient through PD; the seed's advantage shaping against our re-implementation of the
seed's code, in a real training step and across processes; any batch size; data-independent forward calls."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vqrl.trainers.refine as refine
from trainer_utils import count_forward_calls, make_trainer, write_records
from vqrl.data.prompts import SCORE_PREFIX
from vqrl.trainers.refine import thought_of

IMAGES = [
    {"image": "images/chelsea.jpg", "solution": 4.4008, "type": "scoring_image"},
    {"image": "images/degraded/chelsea_l3.jpg", "solution": 1.37, "type": "scoring_image"},
    {"image": "images/coffee.jpg", "solution": 3.2, "type": "scoring_image"},
]
VIDEOS = [
    {"video": "videos/rocket_pan_l0.mp4", "solution": 4.6, "type": "scoring_video"},
    {"video": "videos/coffee_pan_l2.mp4", "solution": 2.3, "type": "scoring_video"},
    {"video": "videos/rocket_pan_l0.mp4", "solution": 4.1, "type": "scoring_video"},
]


def _refine(tiny_model_dir, tmp_path, records, **kw):
    data = write_records(tmp_path / "d.json", records)
    base = dict(trainer="refine", reward_funcs=["format", "answer"], num_generations=2,
                per_device_train_batch_size=4)
    base.update(kw)
    return make_trainer(tiny_model_dir, tmp_path / "out", [data], **base)


def _pd(trainer, rows, completions, solutions=None):
    """The PD rewards of completions for these dataset rows, as TRL's reward call makes them."""
    trainer._tokenize_prompts([r["prompt"] for r in rows])
    return trainer._pd_rewards(completions, solution=solutions or [r["solution"] for r in rows],
                               prompt_nothink=[r["prompt_nothink"] for r in rows],
                               sample_id=[r["sample_id"] for r in rows], type=[r["type"] for r in rows])


# ---------------------------------------------------------------- PD on constructed probabilities

class FakeTeacher:
    """Stands in for teacher_forced_probs: the 4 score-token probabilities come from `table`, by the first marker
    word found in the prefix (None: a prefix without any, i.e. the no-think one). Every prefix and target is kept."""

    def __init__(self, tokenizer, table):
        self.tok, self.table, self.calls = tokenizer, table, []

    def __call__(self, model, prefixes, targets, visions, pad_id, encode_once=False):
        out = []
        for prefix, target in zip(prefixes, targets, strict=True):
            text = self.tok.decode(prefix)
            self.calls.append((text, self.tok.decode(target)))
            marks = [mark for mark in self.table if mark and mark in text]
            out.append(torch.tensor(self.table[marks[0] if marks else None]))
        return out

    def think_prefixes(self):
        """The assistant part of each think prefix (after the chat template's last `assistant`)."""
        parts = [text.split("assistant")[-1] for text, _ in self.calls]
        return [part for part in parts if "<think>" in part]


TABLE = {None: [0.5, 0.5, 0.2, 0.5], "zebra": [0.9, 0.9, 0.7, 0.8], "okapi": [0.9, 0.9, 0.1, 0.9]}


@pytest.fixture
def fake(monkeypatch):
    def install(trainer, table=TABLE):
        teacher = FakeTeacher(trainer.processing_class.tokenizer, table)
        monkeypatch.setattr(refine, "teacher_forced_probs", teacher)
        return teacher
    return install


GATE_CASES = [
    # completion (MOS 4.4008), pd with the seed's weights: P_think(tenths) − P_nothink(tenths) = 0.7 − 0.2 if it passes
    ("<think>zebra</think><answer>Score: 4.40</answer>", 0.5),   # format and answer: PD
    ("<think>zebra</think><answer>Score: 2.00</answer>", 0.0),   # format only
    ("zebra <answer>Score: 4.40</answer>", 0.0),                  # answer only
    ("<think>zebra</think> Score: 4.40", 0.0),                    # neither
    ("<think>okapi</think><answer>Score: 4.40</answer>", 0.0),   # passes, but thinking lowered P: clamped to 0
    ("<think>zebra</Think><answer>Score: 4.40</answer>", 0.5),   # a close tag `format` accepts
]


def test_pd_is_earned_only_with_format_and_answer(tiny_model_dir, tmp_path, fake):
    trainer = _refine(tiny_model_dir, tmp_path, IMAGES[:2])
    assert trainer.args.pd_mode == "seed" and trainer.pd_weights == (0.0, 0.0, 1.0, 0.0)  # the default
    fake(trainer)
    rows = [trainer.train_dataset[0]] * len(GATE_CASES)
    got = _pd(trainer, rows, [c for c, _ in GATE_CASES])
    assert got == pytest.approx([pd for _, pd in GATE_CASES], abs=1e-6)


def test_pd_gate_is_configurable(tiny_model_dir, tmp_path, fake):
    trainer = _refine(tiny_model_dir, tmp_path, IMAGES[:2], pd_gate=["format_strict", "answer_strict"])
    fake(trainer)
    rows = [trainer.train_dataset[0]] * 3
    got = _pd(trainer, rows, ["<think>zebra</think><answer>Score: 4.40</answer>",
                              "<think>zebra</Think><answer>Score: 4.40</answer>",  # the seed's tags are literal
                              "<think>zebra</think><answer>Score: 4.4</answer>"])  # and its score d.dd
    assert got == pytest.approx([0.5, 0.0, 0.0], abs=1e-6)


def test_pd_logs_its_probabilities_its_share_and_its_time(tiny_model_dir, tmp_path, fake, monkeypatch):
    trainer = _refine(tiny_model_dir, tmp_path, IMAGES[:2])
    fake(trainer)
    clock = iter([10.0, 10.25])
    monkeypatch.setattr(refine, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    trainer.model.train()
    rows = [trainer.train_dataset[0]] * 2
    calls_before = trainer.pd_forward_calls
    assert _pd(trainer, rows, [GATE_CASES[0][0], GATE_CASES[1][0]]) == pytest.approx([0.5, 0.0], abs=1e-6)
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items() if k.startswith("refine/")}
    # the forward passes this PD call made (its cost), not the running total
    assert logged["refine/pd_forward_calls"] == trainer.pd_forward_calls - calls_before > 0
    assert logged["refine/pd_seconds"] == 0.25  # the time PD took, not a sum of clock readings
    assert logged["refine/frac_earning_pd"] == 0.5
    assert logged["refine/p_think"] == pytest.approx(0.7) and logged["refine/p_nothink"] == pytest.approx(0.2)


@pytest.mark.parametrize("flags, expected", [
    ({"pd_mode": "paper"}, (0.6 * 0.9 + 0.3 * 0.7 + 0.1 * 0.8) - (0.6 * 0.5 + 0.3 * 0.2 + 0.1 * 0.5)),
    ({"pd_weights": [0, 0, 3, 0]}, 1.0),  # 3 × 0.5 clamped to 1
])
def test_pd_weights_and_clamp(tiny_model_dir, tmp_path, fake, flags, expected):
    trainer = _refine(tiny_model_dir, tmp_path, IMAGES[:2], **flags)
    fake(trainer)
    got = _pd(trainer, [trainer.train_dataset[0]], ["<think>zebra</think><answer>Score: 4.40</answer>"])
    assert got == pytest.approx([expected], abs=1e-6)


@pytest.mark.parametrize("mode, mos, target", [
    ("seed", 4.4008, "4.40"), ("seed", 4.999, "4.99"), ("seed", 4.4, "4.40"), ("seed", 5, "5.00"),
    ("paper", 4.999, "5.00"), ("paper", 4.4008, "4.40"),
])
def test_pd_target_is_the_mos_as_the_mode_writes_it(tiny_model_dir, tmp_path, fake, mode, mos, target):
    trainer = _refine(tiny_model_dir, tmp_path, IMAGES[:2], pd_mode=mode)
    teacher = fake(trainer)
    _pd(trainer, [trainer.train_dataset[0]], [f"<think>zebra</think><answer>Score: {mos:.2f}</answer>"], [mos])
    assert {t for _, t in teacher.calls} == {target}


@settings(max_examples=500, deadline=None)
@given(st.floats(1, 5))
def test_seed_score_text_is_the_seeds_truncation(mos):
    """The seed writes `str(solution)[:4]`; where str() has two decimals or more we agree exactly."""
    if len(str(mos).partition(".")[2]) >= 2:
        assert refine.seed_score_text(mos) == str(mos)[:4]
    assert float(refine.seed_score_text(mos)) <= mos < float(refine.seed_score_text(mos)) + 0.01 + 1e-12


@pytest.mark.parametrize("mos", [1e-05, 12345678901234567890.0, -3.25])
def test_seed_score_text_of_a_number_str_cannot_truncate_is_the_plain_format(mos):
    """Where repr() is not `digits.digits` (an exponent), the seed's truncation has no meaning: the target falls
    back to the plain two-decimal score text, never a garbled one."""
    from vqrl.data.prompts import format_score

    text = refine.seed_score_text(mos)
    assert text == (format_score(mos) if "e" in repr(mos) else "-3.25")


def test_an_empty_pd_gate_is_a_configuration_problem(monkeypatch):
    from types import SimpleNamespace

    from vqrl.trainers.refine import RefineTrainer

    monkeypatch.delenv("VQRL_VISION_ONCE", raising=False)
    args = SimpleNamespace(pd_mode="seed", pd_weights=None, pd_gate=[], vision_once="auto")
    assert "--pd_gate: must name at least one rule reward (e.g. format answer)" in RefineTrainer.config_problems(args)


@pytest.mark.parametrize("text, thought", [
    ("<think>a</think><answer>Score: 4.40</answer>", "<think>a</think>"),
    ("<think>a</Think><answer>Score: 4.40</answer>", "<think>a</Think>"),
    ("<think>a</ think><answer>Score: 4.40</answer>", "<think>a</ think>"),
    ("<think>a</think>b</think><answer>Score: 4.40</answer>", "<think>a</think>"),
    ("<think>a <answer>Score: 4.40</answer>", "<think>a <answer>Score: 4.40</answer></think>"),
])
def test_thought_ends_at_formats_close_tag(text, thought):
    assert thought_of(text) == thought


def test_pd_think_context_never_holds_the_completions_answer(tiny_model_dir, tmp_path, fake):
    """With `</Think>` (which `format` accepts) the whole completion, its own answer included, used to become the
    think context: a reward the policy could hack."""
    trainer = _refine(tiny_model_dir, tmp_path, IMAGES[:2])
    teacher = fake(trainer)
    completions = ["<think>zebra</Think><answer>Score: 4.40</answer>", "<think>zebra</ think >\n<answer>Score: 4.40</answer>"]
    _pd(trainer, [trainer.train_dataset[0]] * 2, completions)
    think = teacher.think_prefixes()
    assert len(think) == 2
    assert think[0].strip() == "<think>zebra</Think>" + SCORE_PREFIX.strip()
    assert think[1].strip() == "<think>zebra</ think >" + SCORE_PREFIX.strip()


# ---------------------------------------------------------------- PD on the real model

def _direct_prob(model, processor, prompt, text, target):
    """P of each target token by one plain forward of a single unpadded sequence."""
    from vqrl.modeling import vision as V

    ids, vision = V.encode_prompt(processor, prompt)
    tok = processor.tokenizer
    seq = ids + text + tok.encode(SCORE_PREFIX, add_special_tokens=False) + target
    input_ids = torch.tensor([seq])
    extra = V.collate([vision])
    extra["mm_token_type_ids"] = V.mm_token_type_ids(input_ids, model.config.image_token_id, model.config.video_token_id)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **extra).logits[0]
    start = len(seq) - len(target) - 1
    return torch.stack([logits[start + k].softmax(-1)[t] for k, t in enumerate(target)])


def test_pd_reads_the_probabilities_of_the_right_sequences(tiny_model_dir, tmp_path, monkeypatch):
    """The batched, padded teacher forcing gives each think and no-think sequence's probabilities as one plain forward
    of it does (relative 1e-4), and pd is clamp(Σ w (P_think − P_nothink)) of exactly those."""
    trainer = _refine(tiny_model_dir, tmp_path, IMAGES[:2], pd_mode="paper")
    seen = []

    real = refine.teacher_forced_probs

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(refine, "teacher_forced_probs", spy)
    row0, row1 = trainer.train_dataset[0], trainer.train_dataset[1]
    rows = [row0, row0, row1, row1]
    completions = ["<think>sharp cat, fine fur</think><answer>Score: 4.40</answer>",
                   "<think>looks ok</think><answer>Score: 2.00</answer>",
                   "<think>blurry, noisy</think><answer>Score: 1.50</answer>",
                   "no tags at all"]
    trainer.model.eval()
    pd = _pd(trainer, rows, completions)
    p_think, p_nothink = seen[0], seen[1]  # 4 think sequences in one call; the no-think ones (per prompt) next
    tok = trainer.processing_class.tokenizer
    w = torch.tensor(refine.PD_WEIGHTS["paper"], dtype=torch.float64)
    for i in range(4):
        target = tok.encode(f"{rows[i]['solution']:.2f}", add_special_tokens=False)
        think = tok.encode(thought_of(completions[i]), add_special_tokens=False)
        direct = _direct_prob(trainer.model, trainer.processing_class, rows[i]["prompt"], think, target)
        assert torch.allclose(p_think[i], direct, rtol=1e-4, atol=0)
    for i, owner in ((0, 0), (2, 1)):  # the no-think forward of each prompt
        target = tok.encode(f"{rows[i]['solution']:.2f}", add_special_tokens=False)
        direct = _direct_prob(trainer.model, trainer.processing_class, rows[i]["prompt_nothink"], [], target)
        assert torch.allclose(p_nothink[owner], direct, rtol=1e-4, atol=0)
    nothink_of = [p_nothink[0], p_nothink[0], p_nothink[1], p_nothink[1]]
    for i, passes in enumerate([True, False, True, False]):
        raw = float((w * (p_think[i].double() - nothink_of[i].double())).sum())
        assert pd[i] == (pytest.approx(min(1.0, max(0.0, raw)), abs=1e-12) if passes else 0.0)


def test_pd_has_no_gradient(tiny_model_dir, tmp_path):
    """PD's forward passes build no autograd graph: a backward through them fails, while the same computation with
    autograd on does reach the weights (so this test can fail)."""
    trainer = _refine(tiny_model_dir, tmp_path, IMAGES[:2])
    trainer.model.train()
    row = trainer.train_dataset[0]
    trainer._tokenize_prompts([row["prompt"]])
    tok = trainer.processing_class.tokenizer
    prefix = trainer._pending_prompt_ids[0] + tok.encode("<think>a</think>" + SCORE_PREFIX, add_special_tokens=False)
    target = tok.encode("4.40", add_special_tokens=False)
    vision = trainer._pending_vision[0]
    trainer.model.zero_grad(set_to_none=True)

    (probs,) = trainer._forward_probs([prefix], [target], [vision])
    assert not probs.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        probs.sum().backward()
    assert all(p.grad is None for p in trainer.model.parameters())

    (with_grad,) = refine.teacher_forced_probs.__wrapped__(trainer.model, [prefix], [target], [vision],
                                                           tok.pad_token_id)
    with_grad.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())
    assert torch.allclose(with_grad.detach(), probs, rtol=1e-5)


# ---------------------------------------------------------------- the seed's advantage shaping

def seed_advantages_reference(rewards, num_generations, dtype=torch.float32):
    """Written from the seed's compute_loss (grpo_trainer_refine-iqa.py), one group at a time (the seed holds one
    prompt per device, so its whole-batch test is a per-group test)."""
    out = []
    for start in range(0, len(rewards), num_generations):
        r = torch.tensor(rewards[start:start + num_generations], dtype=dtype)
        mean, std = r.mean(), r.std()
        if not all(v < 2 for v in r):
            advantages = (r - mean) / (std + 1e-4)
            out += [0.0 if a <= 0 else float(a) for a in advantages]
        else:
            out += ((r - mean - 0.2 * 1e-4) / (std + 1e-4)).tolist()
    return out


@pytest.mark.parametrize("rewards, expected", [
    ([0, 0, 1, 1], [(-0.5 - 2e-5) / (3 ** -0.5 + 1e-4)] * 2 + [(0.5 - 2e-5) / (3 ** -0.5 + 1e-4)] * 2),  # not −0.2
    ([1, 1, 1, 1], [-0.2] * 4),                                           # all equal: −0.2 each
    ([2, 1, 0, 2.5], None),                                               # one passes: positives only
])
def test_seed_advantages_pinned(rewards, expected):
    got = refine.seed_advantages(torch.tensor(rewards, dtype=torch.float32), 4).tolist()
    assert got == pytest.approx(seed_advantages_reference(rewards, 4), abs=1e-6)
    if expected is not None:
        assert got == pytest.approx(expected, abs=1e-6)
    else:
        assert got[1] == got[2] == 0.0 and got[0] > 0 and got[3] > got[0]


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 8).flatmap(lambda g: st.tuples(st.just(g), st.lists(
    st.lists(st.one_of(st.sampled_from([0.0, 1.0, 2.0, 1.9999, 2.0001]), st.floats(0, 3)), min_size=g, max_size=g),
    min_size=1, max_size=4))))
def test_seed_advantages_equal_the_seeds_code(case):
    """In float64: the formula divides by std + 1e-4, so in float32 the rounding of a group's mean and std (all
    equal rewards of 1.9999: std 0 one way, ~1e-7 the other) moves an advantage by ~1e-3 between two correct
    implementations; in float64 that noise is ~1e-12 and the comparison is of the formula itself."""
    generations, groups = case
    rewards = [r for group in groups for r in group]
    got = refine.seed_advantages(torch.tensor(rewards, dtype=torch.float64), generations).tolist()
    assert got == pytest.approx(seed_advantages_reference(rewards, generations, torch.float64), rel=1e-9, abs=1e-9)


PRESET = [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 1.0, 0.0, 2.5]


def preset_reward(completions, **kwargs):
    """Constructed rewards by position in the batch: one group with no pass, one all equal, one with passes."""
    return PRESET[:len(completions)]


def test_shaping_in_a_training_step_is_the_seeds(tiny_model_dir, tmp_path):
    trainer = _refine(tiny_model_dir, tmp_path, IMAGES, reward_funcs=["test_refine:preset_reward"],
                      num_generations=4, per_device_train_batch_size=12, pd_advantage_shaping="true",
                      max_steps=1, max_completion_length=4)
    rewards, advantages = [], []
    score, generate = trainer._calculate_rewards, trainer._generate_and_score_completions

    def scored(*args, **kwargs):
        rewards.append(score(*args, **kwargs))
        return rewards[-1]

    def generated(inputs):
        output = generate(inputs)
        advantages.append(output["advantages"].tolist())
        return output

    trainer._calculate_rewards, trainer._generate_and_score_completions = scored, generated
    trainer.train()
    totals = rewards[0].sum(dim=1).tolist()  # preset + pd, weights 1
    assert [round(t) for t in totals[:8]] == PRESET[:8]  # the constructed rewards reached TRL (pd is 0 or tiny)
    assert advantages[0] == pytest.approx(seed_advantages_reference(totals, 4), abs=1e-5)
    assert advantages[0][4:8] == pytest.approx([-0.2] * 4, abs=1e-5) and advantages[0][0] < -0.5


def test_shaping_slices_groups_that_straddle_processes(tiny_model_dir, tmp_path, monkeypatch):
    """TRL gathers every process's rewards and keeps its own slice: with 6 completions per process and groups of 4,
    process 1 holds the end of group 0 and all of group 1, and must get the seed's advantages of exactly those."""
    trainer = _refine(tiny_model_dir, tmp_path, IMAGES[:2], num_generations=4, per_device_train_batch_size=8,
                      pd_advantage_shaping="true")
    trainer.model.train()
    totals = [0.0, 2.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    per_func = torch.zeros(len(totals), len(trainer.reward_funcs))
    per_func[:, 0], per_func[:, -1] = torch.tensor(totals) - 0.25, 0.25  # format + pd; answer 0
    trainer._gathered_rewards = per_func
    expected = seed_advantages_reference(totals, 4)
    for process in (0, 1):
        monkeypatch.setattr(type(trainer.accelerator), "process_index", property(lambda self, p=process: p))
        assert trainer._seed_advantages_local(6).tolist() == pytest.approx(expected[6 * process:6 * process + 6],
                                                                           abs=1e-6)


def test_shaping_in_evaluation_uses_the_eval_group_size(tiny_model_dir, tmp_path):
    trainer = _refine(tiny_model_dir, tmp_path, IMAGES[:2], num_generations=4, num_generations_eval=2,
                      per_device_train_batch_size=8, pd_advantage_shaping="true")
    totals = [0.0, 2.0, 1.0, 0.0, 1.0, 1.0, 0.0, 3.0]
    per_func = torch.zeros(len(totals), len(trainer.reward_funcs))
    per_func[:, 0] = torch.tensor(totals)
    trainer._gathered_rewards = per_func
    for training, group in ((True, 4), (False, 2)):
        trainer.model.train(training)
        assert trainer._seed_advantages_local(8).tolist() == pytest.approx(
            seed_advantages_reference(totals, group), abs=1e-6)
    assert seed_advantages_reference(totals, 4) != pytest.approx(seed_advantages_reference(totals, 2), abs=1e-3)


# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize("flags, message", [
    ({"pd_weights": [1, 0, 0]}, r"--pd_weights 1.0 0.0 0.0: give 4 finite weights"),
    ({"pd_mode": "exact"}, r"--pd_mode exact: must be one of seed, paper"),
    ({"pd_gate": ["no_such_reward"]}, r"unknown reward 'no_such_reward'"),
])
def test_bad_pd_options_are_clear_errors(tiny_model_dir, tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        _refine(tiny_model_dir, tmp_path, IMAGES[:2], **flags)


# ---------------------------------------------------------------- training

@pytest.mark.parametrize("prompts", [1, 3, 8])
def test_any_batch_size_trains(tiny_model_dir, tmp_path, prompts):
    records = (IMAGES + VIDEOS + IMAGES)[:max(prompts, 2)]
    trainer = _refine(tiny_model_dir, tmp_path, records, per_device_train_batch_size=2 * prompts, max_steps=1)
    trainer.train()
    assert trainer.state.global_step == 1
    assert trainer.pd_forward_calls >= 2


def _count_forward_calls(trainer) -> int:
    """Model forward calls in one training step, generation excluded (it runs on gathered weights)."""
    calls = count_forward_calls(trainer)
    trainer.train()
    return calls["n"]


def test_forward_calls_do_not_depend_on_the_data(tiny_model_dir, tmp_path):
    counts = []
    for i, (records, length) in enumerate([(IMAGES, 4), (VIDEOS, 24), (IMAGES[:1] + VIDEOS[:2], 12)]):
        trainer = _refine(tiny_model_dir, tmp_path / str(i), records, max_completion_length=length, max_steps=1,
                          per_device_train_batch_size=6, num_generations=3, beta=0.04)
        counts.append(_count_forward_calls(trainer))
    assert counts[0] == counts[1] == counts[2] > 0


def test_teacher_forcing_gives_each_targets_logits_rows_when_asked(tiny_model_dir):
    """return_logits: the full-vocabulary row of every target token (its softmax gives the probability returned),
    an empty row block for an empty target, also when every target is empty."""
    from transformers import AutoModelForImageTextToText

    from vqrl.modeling.teacher_forcing import teacher_forced_probs

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    vocab = model.lm_head.out_features
    prefixes, targets = [[11, 12, 13], [21, 22]], [[31, 32], []]
    probs, rows = teacher_forced_probs(model, prefixes, targets, [{}, {}], 0, return_logits=True)
    assert [r.shape for r in rows] == [(2, vocab), (0, vocab)] and probs[1].numel() == 0
    for k, token in enumerate(targets[0]):
        with torch.no_grad():
            direct = model(input_ids=torch.tensor([prefixes[0] + targets[0][:k]])).logits[0, -1]
        assert torch.allclose(rows[0][k], direct, atol=1e-4)
        assert float(probs[0][k]) == pytest.approx(float(rows[0][k].softmax(-1)[token]), rel=1e-5)
    probs, rows = teacher_forced_probs(model, prefixes, [[], []], [{}, {}], 0, return_logits=True)
    assert [r.shape for r in rows] == [(0, vocab)] * 2 and all(p.numel() == 0 for p in probs)
