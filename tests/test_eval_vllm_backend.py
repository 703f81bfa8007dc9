"""`vqrl eval --backend vllm` without vLLM: a fake engine stands in for vllm.LLM, so the backend's own work (batches,
record order, unreadable media, the requests it sends, the three score modes) is checked in the default suite. The
real engine, and agreement with the HF backend, are checked by tests/test_vllm.py (`make test-vllm`)."""

from __future__ import annotations

import math
import sys
import types
from types import SimpleNamespace

import pytest
from transformers import AutoConfig, AutoProcessor

from test_eval_run import _args, images, rows_of
from trainer_utils import write_records
from vqrl.eval import run as eval_run
from vqrl.eval import vllm_backend
from vqrl.eval.records import read_eval_data


class FakeLLM:
    """vllm.LLM's surface that the backend uses. Each request gets the next scripted answer: for generation a list
    of K texts, for `--mode expected` a {digit: probability} dict. Refuses a request over its media limits, as vLLM
    does."""

    made: list[FakeLLM] = []
    answers: list = []

    def __init__(self, model, seed, max_model_len, limit_mm_per_prompt, logprobs_mode):
        self.kwargs = dict(model=model, seed=seed, limit_mm_per_prompt=limit_mm_per_prompt, logprobs_mode=logprobs_mode)
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(hf_config=AutoConfig.from_pretrained(model)))
        self.batches: list[list[dict]] = []
        self.params: list = []
        FakeLLM.made.append(self)

    def generate(self, rows, params, use_tqdm):
        self.batches.append(rows)
        self.params.append(params)
        out = []
        for row in rows:
            for kind, item in (row.get("multi_modal_data") or {}).items():
                n = len(item) if isinstance(item, list) else 1
                if n > self.kwargs["limit_mm_per_prompt"][kind]:
                    raise ValueError(f"at most {self.kwargs['limit_mm_per_prompt'][kind]} {kind}(s) per prompt")
            answer = FakeLLM.answers.pop(0)
            if isinstance(answer, dict):  # expected mode: the log-probs of the allowed digit tokens
                outputs = [SimpleNamespace(logprobs=[{self.digit_ids[d]: SimpleNamespace(
                    logprob=math.log(p) if p > 0 else -1000.0) for d, p in answer.items()}])]  # 0: exp underflows
            else:
                outputs = [SimpleNamespace(text=t) for t in answer]
            out.append(SimpleNamespace(prompt_token_ids=row["prompt_token_ids"], outputs=outputs))
        return out


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch, tiny_model_dir):
    """A `vllm` module holding FakeLLM; the expansion check (vLLM's expanded prompt against the processor's, which a
    fake engine cannot expand) records what it was given."""
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.made, FakeLLM.answers = [], []
    tok = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    FakeLLM.digit_ids = {d: tok.convert_tokens_to_ids(str(d)) for d in range(1, 6)}
    checked = []
    monkeypatch.setattr(vllm_backend, "check_expansion", lambda sent, processed, i: checked.append((sent, i)))
    # the fake engine takes video metadata with the frames, as vLLM 0.32 does (vllm_compat reads real vLLM's code)
    monkeypatch.setattr(vllm_backend, "llm_drops_video_metadata", lambda llm: False)
    return checked


def _records(tmp_path, n, broken=()):
    recs = images(tmp_path, n)
    for i in broken:
        bad = tmp_path / f"broken{i}.jpg"
        bad.write_bytes(b"\xff\xd8\xff not a jpeg")
        recs[i]["image"] = str(bad)
    return recs


def test_batches_keep_record_order_and_an_unreadable_image_costs_only_its_record(tiny_model_dir, tmp_path, fake_vllm):
    recs = _records(tmp_path, 5, broken=[2])
    data = read_eval_data([write_records(tmp_path / "d.json", recs)], None, None)
    args = _args(tiny_model_dir, [str(tmp_path / "d.json")], tmp_path / "out", batch_size=2)
    FakeLLM.answers = [[f"<answer>Score: {s}</answer>"] for s in ("1.50", "2.00", "3.50", "4.00")]
    got = vllm_backend.score_with_vllm(args, data.records)
    assert [g[0] for g in got] == [1.5, 2.0, None, 3.5, 4.0]
    assert got[1] == (2.0, "<answer>Score: 2.00</answer>", "")
    assert got[2][1] == "" and got[2][2].startswith("unreadable media: ")
    (llm,) = FakeLLM.made
    assert [len(b) for b in llm.batches] == [2, 1, 1]  # records 0-1, 2-3 (2 unreadable), 4
    config = llm.llm_engine.model_config.hf_config
    for batch in llm.batches:
        for row in batch:  # each image's placeholder run collapsed to one token, which vLLM expands itself
            assert row["prompt_token_ids"].count(config.image_token_id) == 1 and "image" in row["multi_modal_data"]
    sent = [s for s, _ in fake_vllm]
    assert [i for _, i in fake_vllm] == [0, 1, 0, 0] and all(s.count(config.image_token_id) > 1 for s in sent)
    assert llm.kwargs["model"] == tiny_model_dir and llm.kwargs["logprobs_mode"] == "processed_logprobs"
    greedy = llm.params[0].kwargs
    assert greedy["n"] == 1 and greedy["temperature"] == 0 and greedy["max_tokens"] == 8


def test_sample_mode_averages_the_k_samples_that_parse(tiny_model_dir, tmp_path, fake_vllm):
    data = read_eval_data([write_records(tmp_path / "d.json", _records(tmp_path, 2))], None, None)
    args = _args(tiny_model_dir, [str(tmp_path / "d.json")], tmp_path / "out", mode="sample", num_samples=3,
                 temperature=0.7)
    FakeLLM.answers = [["<answer>Score: 2</answer>", "no score", "<answer>Score: 4.5</answer>"], ["x", "y", "z"]]
    got = vllm_backend.score_with_vllm(args, data.records)
    assert got == [(3.25, "<answer>Score: 2</answer>", ""), (None, "x", "")]
    params = FakeLLM.made[0].params[0].kwargs
    assert params["n"] == 3 and params["temperature"] == 0.7 and params["seed"] == 0


def test_only_expected_mode_appends_the_score_prefix(tiny_model_dir, tmp_path, fake_vllm):
    """Generation (greedy or sampled) starts the answer itself, also without thinking: its prompt ends with the
    chat template's assistant turn, not with the score prefix that expected mode reads the digit after."""
    data = read_eval_data([write_records(tmp_path / "d.json", _records(tmp_path, 1))], None, None)
    prefix = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer.encode(vllm_backend.SCORE_PREFIX,
                                                                            add_special_tokens=False)
    for mode in ("greedy", "expected"):
        FakeLLM.answers = [{3: 1.0} if mode == "expected" else ["<answer>Score: 3</answer>"]]
        args = _args(tiny_model_dir, [str(tmp_path / "d.json")], tmp_path / mode, mode=mode, no_think=True)
        assert vllm_backend.score_with_vllm(args, data.records)[0][0] == 3.0
        sent, _ = fake_vllm[-1]
        assert (sent[-len(prefix):] == prefix) == (mode == "expected"), mode


def test_expected_mode_is_the_probability_weighted_digit(tiny_model_dir, tmp_path, fake_vllm):
    data = read_eval_data([write_records(tmp_path / "d.json", _records(tmp_path, 2))], None, None)
    args = _args(tiny_model_dir, [str(tmp_path / "d.json")], tmp_path / "out", mode="expected", no_think=True)
    FakeLLM.answers = [{1: 0.1, 2: 0.2, 3: 0.4, 4: 0.2, 5: 0.1}, {5: 0.5, 4: 0.25}]
    got = vllm_backend.score_with_vllm(args, data.records)
    assert [g[0] for g in got] == pytest.approx([3.0, (5 * 0.5 + 4 * 0.25) / 0.75])
    FakeLLM.answers = [{d: 0.0 for d in range(1, 6)}, {2: 1.0}]  # no probability left on any digit: no score
    assert [g[0] for g in vllm_backend.score_with_vllm(args, data.records)] == [None, 2.0]
    params = FakeLLM.made[0].params[0].kwargs
    assert params["max_tokens"] == 1 and sorted(params["allowed_token_ids"]) == sorted(FakeLLM.digit_ids.values())
    # the prompt ends with the score prefix, so the next token is the first digit
    prefix = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer.encode(vllm_backend.SCORE_PREFIX,
                                                                            add_special_tokens=False)
    assert all(s[-len(prefix):] == prefix for s, _ in fake_vllm)
    think = _args(tiny_model_dir, [str(tmp_path / "d.json")], tmp_path / "out", mode="expected", think=True)
    with pytest.raises(ValueError, match="--backend vllm --mode expected supports --no_think only"):
        vllm_backend.score_with_vllm(think, data.records)


def test_evaluate_with_the_vllm_backend_writes_its_predictions(tiny_model_dir, tmp_path, fake_vllm):
    data = write_records(tmp_path / "d.json", _records(tmp_path, 3))
    FakeLLM.answers = [["<answer>Score: 1.25</answer>"], ["<answer>Score: 4</answer>"], ["nothing"]]
    eval_run.evaluate(_args(tiny_model_dir, [data], tmp_path / "out", backend="vllm"))
    rows = rows_of(tmp_path / "out")
    assert [r["prediction"] for r in rows] == ["1.250000", "4.000000", ""]
    assert [r["completion"] for r in rows] == ["<answer>Score: 1.25</answer>", "<answer>Score: 4</answer>", "nothing"]


def test_a_full_reference_record_sends_its_reference_and_its_image(tiny_model_dir, tmp_path, fake_vllm):
    """A scoring record with a `reference` (full-reference IQA) has two images in its prompt, the reference first:
    the engine must accept two images per prompt and receive both."""
    recs = _records(tmp_path, 2)
    recs[1]["reference"] = recs[0]["image"]
    data = read_eval_data([write_records(tmp_path / "d.json", recs)], None, None)
    args = _args(tiny_model_dir, [str(tmp_path / "d.json")], tmp_path / "out")
    FakeLLM.answers = [["<answer>Score: 2</answer>"], ["<answer>Score: 3</answer>"]]
    assert [g[0] for g in vllm_backend.score_with_vllm(args, data.records)] == [2.0, 3.0]
    (llm,) = FakeLLM.made
    first, second = llm.batches[0]
    config = llm.llm_engine.model_config.hf_config
    assert second["prompt_token_ids"].count(config.image_token_id) == 2
    ref, img = second["multi_modal_data"]["image"]
    assert ref.tobytes() == first["multi_modal_data"]["image"].tobytes()  # the reference is record 0's photo
    assert img.tobytes() != ref.tobytes()


def test_a_video_record_is_sent_with_its_frames(tiny_model_dir, tmp_path, fake_vllm):
    from trainer_utils import EXAMPLES

    recs = [{"video": f"{EXAMPLES}/videos/rocket_pan_l0.mp4", "type": "scoring_video", "solution": 4.0},
            *_records(tmp_path, 1)]
    data = read_eval_data([write_records(tmp_path / "d.json", recs)], None, None)
    FakeLLM.answers = [["<answer>Score: 4.25</answer>"], ["<answer>Score: 1</answer>"]]
    args = _args(tiny_model_dir, [str(tmp_path / "d.json")], tmp_path / "out")
    assert [g[0] for g in vllm_backend.score_with_vllm(args, data.records)] == [4.25, 1.0]
    video, image = FakeLLM.made[0].batches[0]
    config = FakeLLM.made[0].llm_engine.model_config.hf_config
    frames, meta = video["multi_modal_data"]["video"]
    assert frames.ndim == 4 and frames.shape[-1] == 3 and meta["fps"] > 0  # (T, H, W, 3) frames and their metadata
    assert video["prompt_token_ids"].count(config.video_token_id) == 1 and "video" not in image["multi_modal_data"]
