"""`vqrl eval`: expected scores by hand from the logits, sample-mode means, resuming a half-done run (only under the
same model and settings), per-dataset outputs, and what a user's bad inputs and a full disk do to it."""

from __future__ import annotations

import argparse
import csv
import errno
import json
import os
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer_utils import EXAMPLES, write_records
from vqrl.eval import predictions as store
from vqrl.eval import run as eval_run
from vqrl.eval.predictions import EvalError
from vqrl.rewards.parsing import parse_score

EXAMPLE_DATA = [os.path.join(EXAMPLES, "RL_examples.json"), os.path.join(EXAMPLES, "RL_examples_eval.json")]


def _args(model, data, out, **kw):
    parser = argparse.ArgumentParser()
    eval_run.add_arguments(parser)
    argv = ["--model", model, "--data", *data, "--image_root", EXAMPLES, "--video_root", EXAMPLES, "--out", str(out),
            "--max_new_tokens", "8", "--batch_size", "3"]
    for k, v in kw.items():
        argv += [f"--{k}"] + ([] if v is True else [str(v)])
    return parser.parse_args(argv)


def rows_of(out) -> list[dict]:
    with open(os.path.join(out, "predictions.csv"), newline="") as f:
        return list(csv.DictReader(f))


def preds_of(out) -> dict[str, str]:
    return {r["sample_id"]: r["prediction"] for r in rows_of(out)}


def images(tmp_path, n=4) -> list[dict]:
    """n scoring records on the example photos, with distinct MOS."""
    names = ["coffee", "rocket", "camera", "astronaut", "chelsea", "grass"]
    return [{"image": os.path.join(EXAMPLES, "images", f"{names[i % 6]}.jpg"), "type": "scoring_image",
             "solution": 1.5 + 0.5 * i} for i in range(n)]


@pytest.fixture
def scripted_generate(monkeypatch):
    """Replace generation with completions we choose: texts[i] are the K completions of the i-th prompt of a call.
    Records every call's keyword arguments."""
    calls, script = [], {}

    def fake(model, processor, prompt_ids, visions, max_new_tokens, do_sample, temperature=1.0,
             num_return_sequences=1):
        calls.append(dict(n=len(prompt_ids), do_sample=do_sample, temperature=temperature, k=num_return_sequences))
        tok = processor.tokenizer
        out = []
        for ids in prompt_ids:
            texts = script["texts"].pop(0)
            assert len(texts) == num_return_sequences
            out += [tok.encode(t, add_special_tokens=False) for t in texts]
        return out

    monkeypatch.setattr(eval_run.inference, "generate", fake)
    return calls, script


# ------------------------------------------------------------------------------------------------------------ scores


def test_expected_score_matches_a_hand_computation(tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vqrl.data.dataset import MediaLoader
    from vqrl.data.media import VisionSpec
    from vqrl.data.prompts import SCORE_PREFIX, PromptConfig, build_messages
    from vqrl.eval.inference import expected_scores
    from vqrl.modeling import vision as V

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_model_dir, padding_side="left")
    loader = MediaLoader(VisionSpec.for_processor(processor), EXAMPLES, EXAMPLES)
    recs = [{"image": "images/coffee.jpg", "type": "scoring_image", "solution": 3.0},
            {"video": "videos/rocket_pan_l0.mp4", "type": "scoring_video", "solution": 4.0}]
    encoded = [V.encode_prompt(processor, build_messages(r, loader.parts(r), PromptConfig(think=False))) for r in recs]
    got = expected_scores(model, processor, [e[0] for e in encoded], [e[1] for e in encoded])
    tok = processor.tokenizer
    for (ids, vision), value in zip(encoded, got):
        seq = torch.tensor([ids + tok.encode(SCORE_PREFIX, add_special_tokens=False)])
        extra = V.collate([vision])
        extra["mm_token_type_ids"] = V.mm_token_type_ids(seq, model.config.image_token_id, model.config.video_token_id)
        with torch.no_grad():
            logits = model(input_ids=seq, attention_mask=torch.ones_like(seq), **extra).logits[0, -1]
        digit_logits = torch.stack([logits[tok.convert_tokens_to_ids(str(d))] for d in range(1, 6)])
        p = digit_logits.softmax(-1)
        assert value == pytest.approx(float(sum((d + 1) * p[d] for d in range(5))), abs=1e-4)
        assert 1.0 <= value <= 5.0


@pytest.mark.parametrize("do_sample", [False, True])
def test_eval_generation_never_produces_an_image_or_video_token(tiny_model_dir, do_sample):
    """Even a model whose likeliest next token is always the image or video token (forced here at the output layer)
    completes without one: eval's generation suppresses them (such a token has no pixels behind it)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vqrl.eval.inference import generate

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_model_dir, padding_side="left")
    vision = [model.config.image_token_id, model.config.video_token_id]

    def favour_vision(module, inputs, output):
        output[..., vision] += 1e4
        return output

    prompt = processor.tokenizer.encode("Rate the photo.", add_special_tokens=False)
    with model.lm_head.register_forward_hook(favour_vision):
        out = generate(model, processor, [prompt, prompt], [{}, {}], 6, do_sample=do_sample, num_return_sequences=2)
    assert len(out) == 4 and all(out)
    assert not {t for c in out for t in c} & set(vision)


def test_greedy_generation_returns_the_completion_from_its_first_token(tiny_model_dir):
    """generate's completions are exactly the tokens after the prompt, from the first (a hand-rolled greedy decode
    with the same suppressed tokens), up to the end-of-text token."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vqrl.eval.inference import generate

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_model_dir, padding_side="left")
    tok = processor.tokenizer
    prompts = [tok.encode(text, add_special_tokens=False) for text in ("Rate the photo.", "Score: 4 or 5?")]
    got = generate(model, processor, prompts, [{}, {}], 5, do_sample=False)
    suppressed = [model.config.image_token_id, model.config.video_token_id]
    for prompt, completion in zip(prompts, got, strict=True):
        seq, expected = list(prompt), []
        for _ in range(5):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
            logits[suppressed] = -float("inf")
            nxt = int(logits.argmax())
            if nxt == tok.eos_token_id:
                break
            expected.append(nxt)
            seq.append(nxt)
        assert completion == expected


def test_generation_stops_each_completion_before_its_first_end_token(tiny_model_dir, monkeypatch):
    """What generate returns ends before the first end token (EOS, pad or the generation config's): neither that
    token nor the padding after it is part of the completion that is decoded and parsed."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vqrl.eval.inference import generate

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_model_dir, padding_side="left")
    tok = processor.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    a, b, c = 11, 12, 13  # ordinary tokens
    tails = [[a, b, eos, c, pad], [a, pad, pad, pad, pad], [eos, a, b, c, pad], [a, b, c, a, b]]
    prompt = tok.encode("Rate the photo.", add_special_tokens=False)

    def fake_generate(input_ids, **kwargs):
        return torch.cat([input_ids, torch.tensor(tails)], dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    got = generate(model, processor, [prompt] * 4, [{}] * 4, 5, do_sample=False)
    assert got == [[a, b], [a], [], [a, b, c, a, b]]


def test_sample_mode_is_the_mean_of_the_k_scores_that_parse(tiny_model_dir, tmp_path, scripted_generate):
    calls, script = scripted_generate
    data = write_records(tmp_path / "d.json", images(tmp_path, 3))
    script["texts"] = [
        ["<think>a</think><answer>Score: 2</answer>", "<answer>Score: 4.5</answer>", "no answer at all"],
        ["nothing", "still nothing", "<think>x</think>"],
        ["<answer>Score: 1.25</answer>", "<answer>Score: 3</answer>", "<answer>Score: 5</answer>"],
    ]
    eval_run.evaluate(_args(tiny_model_dir, [data], tmp_path / "out", mode="sample", num_samples=3, temperature=0.7))
    rows = rows_of(tmp_path / "out")
    assert [r["prediction"] for r in rows] == ["3.250000", "", "3.083333"]  # (2+4.5)/2; none parse; (1.25+3+5)/3
    assert rows[0]["completion"] == "<think>a</think><answer>Score: 2</answer>"  # the first sample is kept
    assert calls == [dict(n=3, do_sample=True, temperature=0.7, k=3)]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["d"]
    assert metrics["n"] == 3 and metrics["n_valid"] == 2 and metrics["parse_fail_rate"] == pytest.approx(1 / 3)


def test_greedy_predictions_are_the_parsed_completions(tiny_model_dir, tmp_path):
    data = write_records(tmp_path / "d.json", [
        {"image": "images/coffee.jpg", "type": "scoring_image", "solution": 3.0, "dataset": "a"},
        {"image": "images/rocket.jpg", "type": "scoring_image", "solution": 4.0, "dataset": "b"},
    ])
    metrics = eval_run.evaluate(_args(tiny_model_dir, [data], tmp_path / "g", mode="greedy"))
    rows = rows_of(tmp_path / "g")
    assert [(r["dataset"], float(r["mos"])) for r in rows] == [("a", 3.0), ("b", 4.0)]
    for r in rows:
        score = parse_score(r["completion"])
        assert r["prediction"] == ("" if score is None else f"{score:.6f}") and r["error"] == ""
    assert set(metrics) == {"a", "b", "overall"}  # grouped by the records' `dataset` field
    assert metrics["overall"]["n"] == 2 and metrics["a"]["n"] == 1


# ------------------------------------------------------------------------------------------------------------ resume


def test_interrupted_evaluation_resumes_to_the_same_predictions(tiny_model_dir, tmp_path, monkeypatch):
    full = eval_run.evaluate(_args(tiny_model_dir, EXAMPLE_DATA, tmp_path / "full", mode="expected", no_think=True))
    calls = {"n": 0}
    original = eval_run.score_records

    def crash_after_two_batches(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return original(*a, **k)

    monkeypatch.setattr(eval_run, "score_records", crash_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        eval_run.evaluate(_args(tiny_model_dir, EXAMPLE_DATA, tmp_path / "cut", mode="expected", no_think=True))
    expected = preds_of(tmp_path / "full")
    half = preds_of(tmp_path / "cut")
    assert len(half) == 6 and all(float(half[k]) == pytest.approx(float(expected[k]), abs=1e-5) for k in half)
    monkeypatch.setattr(eval_run, "score_records", original)
    resumed = eval_run.evaluate(_args(tiny_model_dir, EXAMPLE_DATA, tmp_path / "cut", mode="expected", no_think=True))
    got = preds_of(tmp_path / "cut")
    assert got.keys() == expected.keys() and len(got) == 16
    assert all(float(got[k]) == pytest.approx(float(expected[k]), abs=1e-5) for k in got)
    assert set(resumed) == {"RL_examples", "RL_examples_eval", "overall"} and resumed["overall"]["n"] == 16
    for name in resumed:
        assert resumed[name]["srcc"] == pytest.approx(full[name]["srcc"], abs=1e-6)
        assert (tmp_path / "cut" / f"scatter_{name}.png").exists()


def test_resume_under_another_model_or_mode_is_refused(tiny_model_dir, tmp_path, capsys):
    """It used to 'resume' and print the first model's metrics as the second's."""
    data = [write_records(tmp_path / "d.json", images(tmp_path, 3))]
    out = tmp_path / "out"
    first = eval_run.evaluate(_args(tiny_model_dir, data, out, mode="expected", no_think=True))
    other = tmp_path / "other_model"
    shutil.copytree(tiny_model_dir, other)
    with pytest.raises(EvalError, match=r"predictions made with other settings \(model: .*other_model"):
        eval_run.evaluate(_args(str(other), data, out, mode="expected", no_think=True))
    with pytest.raises(EvalError, match=r"mode: 'expected' -> 'greedy'"):
        eval_run.evaluate(_args(tiny_model_dir, data, out, mode="greedy", no_think=True))
    with pytest.raises(EvalError, match=r"think: False -> True"):
        eval_run.evaluate(_args(tiny_model_dir, data, out, mode="expected"))
    # the same settings resume (nothing to do), and --overwrite starts over with the new ones
    assert eval_run.evaluate(_args(tiny_model_dir, data, out, mode="expected", no_think=True)) == first
    assert eval_run.run(_args(str(other), data, out, mode="expected", no_think=True)) == 2
    assert "use another --out, or --overwrite" in capsys.readouterr().err
    eval_run.evaluate(_args(str(other), data, out, mode="expected", no_think=True, overwrite=True))
    assert json.loads((out / "settings.json").read_text())["model"] == str(other)
    assert len(rows_of(out)) == 3


def test_a_retrained_model_in_the_same_folder_is_another_model(tiny_model_dir, tmp_path):
    model = tmp_path / "final"
    shutil.copytree(tiny_model_dir, model)
    data = [write_records(tmp_path / "d.json", images(tmp_path, 2))]
    eval_run.evaluate(_args(str(model), data, tmp_path / "out", mode="expected", no_think=True))
    weights = next(model.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.raises(EvalError, match=r"other settings \(model_files changed\)"):
        eval_run.evaluate(_args(str(model), data, tmp_path / "out", mode="expected", no_think=True))


def test_predictions_without_settings_are_not_resumed(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text(",".join(store.FIELDS) + "\nx,d,p,3.0,2.0,,\n")
    with pytest.raises(EvalError, match="settings.json beside it is missing"):
        eval_run.evaluate(_args(tiny_model_dir, [write_records(tmp_path / "d.json", images(tmp_path, 1))], out,
                                mode="expected", no_think=True))


def test_changed_data_under_a_resume_is_refused(tiny_model_dir, tmp_path):
    recs = images(tmp_path, 2)
    data = [write_records(tmp_path / "d.json", recs)]
    eval_run.evaluate(_args(tiny_model_dir, data, tmp_path / "out", mode="expected", no_think=True))
    recs[1]["solution"] = 4.9
    write_records(tmp_path / "d.json", recs)
    with pytest.raises(EvalError, match=r"row for sample 'd:1' is for .* \(MOS 2.0\), but the data now says .* 4.9"):
        eval_run.evaluate(_args(tiny_model_dir, data, tmp_path / "out", mode="expected", no_think=True))


def test_metrics_count_only_the_records_of_this_run(tiny_model_dir, tmp_path):
    a = write_records(tmp_path / "a.json", images(tmp_path, 3))
    b = write_records(tmp_path / "b.json", images(tmp_path, 2))
    eval_run.evaluate(_args(tiny_model_dir, [a, b], tmp_path / "out", mode="expected", no_think=True))
    only_a = eval_run.evaluate(_args(tiny_model_dir, [a], tmp_path / "out", mode="expected", no_think=True))
    assert set(only_a) == {"a"} and only_a["a"]["n"] == 3  # b's rows stay in the file but are not counted
    assert len(rows_of(tmp_path / "out")) == 5


# --------------------------------------------------------------------------------------------------- data identity


def test_same_named_files_are_two_datasets(tiny_model_dir, tmp_path):
    """koniq/train.json and spaq/train.json used to share ids train:0.. : the datasets merged and rows were lost."""
    recs = images(tmp_path, 4)
    koniq = write_records(tmp_path / "koniq" / "train.json", recs[:2])
    spaq = write_records(tmp_path / "spaq" / "train.json", recs[2:])
    metrics = eval_run.evaluate(_args(tiny_model_dir, [koniq, spaq], tmp_path / "out", mode="expected", no_think=True))
    assert {k: v["n"] for k, v in metrics.items()} == {"koniq/train": 2, "spaq/train": 2, "overall": 4}
    assert sorted(r["sample_id"] for r in rows_of(tmp_path / "out")) == [
        "koniq/train:0", "koniq/train:1", "spaq/train:0", "spaq/train:1"]
    assert (tmp_path / "out" / "scatter_koniq_train.png").exists()


def test_repeated_sample_ids_are_refused_not_merged(tiny_model_dir, tmp_path):
    recs = images(tmp_path, 3)
    recs[0]["sample_id"] = recs[2]["sample_id"] = "img-7"
    data = write_records(tmp_path / "d.json", recs)
    with pytest.raises(EvalError, match=r"1 sample_id\(s\) repeated .*'img-7' at .*d.json:0, .*d.json:2"):
        eval_run.evaluate(_args(tiny_model_dir, [data], tmp_path / "out", mode="expected", no_think=True))
    assert not (tmp_path / "out" / "predictions.csv").exists()


# ----------------------------------------------------------------------------------------------------- bad inputs


def test_an_unreadable_image_costs_its_record_on_every_run(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "text.jpg").write_text("not an image\n")
    recs = images(tmp_path, 4)
    recs[1]["image"] = str(tmp_path / "text.jpg")
    data = [write_records(tmp_path / "d.json", recs)]
    for _ in range(2):  # the second run retries the broken record, and still finishes
        metrics = eval_run.evaluate(_args(tiny_model_dir, data, tmp_path / "out", mode="expected", no_think=True))
        assert metrics["d"]["n"] == 3 and metrics["d"]["n_unreadable"] == 1 and metrics["d"]["n_skipped"] == 0
        assert "unreadable: " in capsys.readouterr().err
    rows = {r["sample_id"]: r for r in rows_of(tmp_path / "out")}
    assert rows["d:1"]["prediction"] == "" and "UnidentifiedImageError" in rows["d:1"]["error"]
    assert all(rows[k]["prediction"] and not rows[k]["error"] for k in ("d:0", "d:2", "d:3"))


def test_a_file_that_fails_during_inference_costs_its_record(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from vqrl.data.dataset import MediaLoader

    recs = images(tmp_path, 4)
    data = [write_records(tmp_path / "d.json", recs)]
    parts = MediaLoader.parts

    def flaky(self, rec):
        if rec["sample_id"] == "d:2":
            raise OSError("Input/output error")
        return parts(self, rec)

    monkeypatch.setattr(MediaLoader, "parts", flaky)
    metrics = eval_run.evaluate(_args(tiny_model_dir, data, tmp_path / "out", mode="expected", no_think=True))
    assert metrics["d"]["n"] == 3 and metrics["d"]["n_unreadable"] == 1
    assert rows_of(tmp_path / "out")[2]["error"] == "unreadable media: OSError: Input/output error"
    err = capsys.readouterr().err
    assert "d.json:2: unreadable media: OSError: Input/output error" in err
    assert "1 record(s) could not be read during evaluation; they are counted as n_unreadable" in err


def test_the_eval_command_exits_0_on_success_and_2_with_one_line_on_a_user_error(tmp_path, monkeypatch, capsys):
    args = argparse.Namespace(out=str(tmp_path))
    monkeypatch.setattr(eval_run, "evaluate", lambda a: {})
    assert eval_run.run(args) == 0

    def refuse(a):
        raise EvalError("--model m: no such folder")

    monkeypatch.setattr(eval_run, "evaluate", refuse)
    assert eval_run.run(args) == 2 and capsys.readouterr().err == "vqrl eval: error: --model m: no such folder\n"

    def full(a):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "predictions.csv"))

    monkeypatch.setattr(eval_run, "evaluate", full)
    assert eval_run.run(args) == 2 and "no space left on device" in capsys.readouterr().err.lower()


def test_every_image_unreadable_is_a_setup_error_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch):
    recs = images(tmp_path, 3)
    for i, r in enumerate(recs):
        (tmp_path / f"{i}.jpg").write_bytes(b"\xff\xd8\xff junk")
        r["image"] = str(tmp_path / f"{i}.jpg")
    monkeypatch.setattr(eval_run, "_evaluate_hf", lambda *a: pytest.fail("the model must not load"))
    with pytest.raises(EvalError, match=r"setup looks wrong.*every image record is bad \(3 of 3"):
        eval_run.evaluate(_args(tiny_model_dir, [write_records(tmp_path / "d.json", recs)], tmp_path / "out",
                                mode="expected", no_think=True))


def test_the_smallest_settings_are_accepted_and_the_model_is_required(tiny_model_dir, tmp_path):
    from vqrl.eval.settings import apply_model_settings, check_args

    args = _args(tiny_model_dir, ["d.json"], tmp_path, batch_size=1, num_samples=1, max_new_tokens=1)
    apply_model_settings(args)
    check_args(args)
    parser = argparse.ArgumentParser()
    eval_run.add_arguments(parser)
    assert parser.parse_args(["--model", "m", "--data", "d.json", "--out", "o"]).model == "m"
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--data", "d.json", "--out", "o"])
    assert exited.value.code == 2


@pytest.mark.parametrize("flags, message", [
    (dict(video_max_frames=0), "--video_max_frames must be at least 2, got 0"),
    (dict(num_samples=0), "--num_samples must be at least 1"),
    (dict(backend="vllm", mode="expected"), "supports --no_think only"),
])
def test_bad_settings_are_refused_before_anything_loads(tiny_model_dir, tmp_path, capsys, flags, message):
    assert eval_run.run(_args(tiny_model_dir, EXAMPLE_DATA, tmp_path / "out", **flags)) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_model_that_is_neither_a_folder_nor_reachable_is_named_first(tmp_path, monkeypatch):
    import transformers

    def offline(name, *a, **k):  # what from_pretrained raises for an unknown hub id without a network
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files of {name}.\nCheck ...")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    with pytest.raises(EvalError, match=r"^--model outputs/nothing: no such folder, and not loadable as a hub model "
                                        r"\(We couldn't connect to 'https://huggingface.co' .* outputs/nothing\.\)$"):
        eval_run.evaluate(_args("outputs/nothing", ["does-not-matter.json"], tmp_path / "out"))


@pytest.mark.parametrize("what", ["missing", "no_config", "no_weights"])
def test_a_model_folder_that_is_not_a_model_is_named(tiny_model_dir, tmp_path, what):
    model = tmp_path / "m"
    if what != "missing":
        shutil.copytree(tiny_model_dir, model)
        for f in model.glob("config.json" if what == "no_config" else "*.safetensors"):
            f.unlink()
    message = {"missing": "no such folder", "no_config": "no config.json", "no_weights": "no \\*.safetensors"}[what]
    with pytest.raises(EvalError, match=f"--model {model}: {message}"):
        eval_run.evaluate(_args(str(model), EXAMPLE_DATA, tmp_path / "out"))


# ------------------------------------------------------------------------------------------- crashes and full disks


def test_a_cut_off_last_row_is_predicted_again(tiny_model_dir, tmp_path, capsys):
    """A crash mid-write used to leave a row whose prediction was cut (2.41 read as 2.4) and resumed as it was."""
    data = [write_records(tmp_path / "d.json", images(tmp_path, 4))]
    eval_run.evaluate(_args(tiny_model_dir, data, tmp_path / "out", mode="expected", no_think=True))
    expected = preds_of(tmp_path / "out")
    path = tmp_path / "out" / "predictions.csv"
    text = path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    cut = text[: len(text) - len(last) + last.index(",3.0,") + 8]  # ...,3.0,2.5 (the prediction cut short)
    path.write_text(cut)
    eval_run.evaluate(_args(tiny_model_dir, data, tmp_path / "out", mode="expected", no_think=True))
    assert preds_of(tmp_path / "out") == expected
    assert "dropped 1 cut-off or invalid row(s)" in capsys.readouterr().err
    assert path.read_text().endswith("\n") and len(rows_of(tmp_path / "out")) == 4


def test_a_zero_byte_predictions_file_is_started_over(tiny_model_dir, tmp_path):
    """A full disk can leave predictions.csv empty; every later run then failed on it."""
    data = [write_records(tmp_path / "d.json", images(tmp_path, 2))]
    eval_run.evaluate(_args(tiny_model_dir, data, tmp_path / "out", mode="expected", no_think=True))
    expected = preds_of(tmp_path / "out")
    (tmp_path / "out" / "predictions.csv").write_text("")
    metrics = eval_run.evaluate(_args(tiny_model_dir, data, tmp_path / "out", mode="expected", no_think=True))
    assert preds_of(tmp_path / "out") == expected and metrics["d"]["n"] == 2


def test_a_full_disk_says_so_and_leaves_a_resumable_file(tiny_model_dir, tmp_path, monkeypatch, capsys):
    data = [write_records(tmp_path / "d.json", images(tmp_path, 6))]
    real = store._write_all
    writes = {"n": 0}

    def fills_up(fd, payload):
        writes["n"] += 1
        if writes["n"] == 2:  # the second batch: half of it reaches the disk, then it is full
            os.write(fd, payload[: len(payload) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, payload)

    monkeypatch.setattr(store, "_write_all", fills_up)
    assert eval_run.run(_args(tiny_model_dir, data, tmp_path / "out", mode="expected", no_think=True)) == 2
    err = capsys.readouterr().err
    assert "vqrl eval: error: no space left on device writing" in err and "run the same command again" in err
    assert (tmp_path / "out" / "predictions.csv").read_text().endswith("\n")
    assert len(rows_of(tmp_path / "out")) == 3  # the first batch, whole; none of the second
    monkeypatch.setattr(store, "_write_all", real)
    metrics = eval_run.evaluate(_args(tiny_model_dir, data, tmp_path / "out", mode="expected", no_think=True))
    assert metrics["d"]["n"] == 6 and len(rows_of(tmp_path / "out")) == 6


def _rows(texts):
    return [{"sample_id": f"d:{i}", "dataset": "d", "path": f"/x/{i}.jpg", "mos": f"{1 + i % 4}.5",
             "prediction": "" if i % 3 == 2 else f"{2 + i / 10:.6f}", "completion": t, "error": ""}
            for i, t in enumerate(texts)]


@given(texts=st.lists(st.text(alphabet=st.sampled_from('ab ,"\n\r<>:.5é'), max_size=12), min_size=1, max_size=5),
       cut=st.floats(0, 1))
@settings(max_examples=150, deadline=None)
def test_any_cut_of_the_predictions_file_reads_as_whole_original_rows(tmp_path_factory, texts, cut):
    """Wherever a crash or a full disk cuts predictions.csv, what is read back is some of the rows as written,
    never a row with a shortened value; appending after a repair gives a file that reads whole."""
    path = str(tmp_path_factory.mktemp("p") / "predictions.csv")
    rows = _rows(texts)
    store.append(path, rows)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(cut * len(data))])
    got, _ = store.read(path)
    originals = {r["sample_id"]: r for r in rows}
    assert all(row == originals[sid] for sid, row in got.items())
    store.rewrite(path, list(got.values()))
    store.append(path, [r for r in rows if r["sample_id"] not in got])
    assert store.read(path) == (originals, 0)


# ------------------------------------------------------------------------------------------------------------ summary


def _prediction(sample_id, dataset, mos, prediction="", error=""):
    return {"sample_id": sample_id, "dataset": dataset, "path": f"{sample_id}.jpg", "mos": mos,
            "prediction": prediction, "completion": "", "error": error}


def test_summary_counts_scored_unreadable_and_skipped_per_dataset_and_overall(tmp_path, capsys):
    from collections import Counter

    pred_path = str(tmp_path / "predictions.csv")
    store.append(pred_path, [
        _prediction("a1", "a", 1.0, "1.500000"), _prediction("a2", "a", 3.0, "2.500000"),
        _prediction("a3", "a", 4.0, "3.900000"), _prediction("a4", "a", 2.0, error="unreadable image"),
        _prediction("b1", "b", 2.0, ""), _prediction("b2", "b", 4.0, "4.000000"), _prediction("b3", "b", 5.0, "4.5"),
    ])
    metrics = eval_run.summarize(pred_path, str(tmp_path), quiet=True, skipped=Counter({"a": 2, "c": 1}))
    assert capsys.readouterr().out == ""  # quiet: no table
    assert set(metrics) == {"a", "b", "c", "overall"}  # c: every record skipped, still reported
    counts = {name: (m["n"], m["n_unreadable"], m["n_skipped"]) for name, m in metrics.items()}
    assert counts == {"a": (3, 1, 2), "b": (3, 0, 0), "c": (0, 0, 1), "overall": (6, 1, 3)}
    assert metrics["b"]["parse_fail_rate"] == pytest.approx(1 / 3) and metrics["a"]["srcc"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    for name in ("a", "b", "c", "overall"):
        assert (tmp_path / f"scatter_{name}.png").read_bytes()[:4] == b"\x89PNG"
    eval_run.summarize(pred_path, str(tmp_path), skipped=Counter({"a": 2, "c": 1}))
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["dataset", "n", "srcc", "plcc", "krcc", "rmse", "parse_fail_rate", "n_unreadable",
                                "n_skipped"]
    assert [line.split()[0] for line in table[1:]] == ["a", "b", "c", "overall"]
    assert table[1].split()[1:3] == ["3", "1.0"] and table[1].split()[-2:] == ["1", "2"]


def test_records_of_other_tasks_are_counted_and_skipped_not_the_rest_of_their_file(tmp_path):
    from vqrl.eval.records import read_eval_data

    recs = images(tmp_path, 3)
    recs.insert(1, {"image": recs[0]["image"], "type": "choice_image", "solution": "A", "options": ["A. x", "B. y"]})
    data = read_eval_data([write_records(tmp_path / "d.json", recs)], None, None)
    assert data.ignored == 1 and [r["_index"] for r in data.records] == [0, 2, 3]


def test_scatter_is_drawn_whatever_backend_the_machine_configures(tmp_path):
    """An MPLBACKEND or matplotlibrc naming a backend that cannot start (no display) does not stop the summary."""
    import subprocess
    import sys

    (tmp_path / "gui_backend.py").write_text('raise ImportError("this backend needs a display")\n')
    env = {**os.environ, "MPLBACKEND": "module://gui_backend",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    code = ("import sys; from vqrl.eval.run import scatter; "
            "scatter([{'mos': '2.0', 'prediction': '2.5'}, {'mos': '4', 'prediction': ''}], 't', sys.argv[1])")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.png")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_a_data_file_whose_every_image_is_unreadable_is_a_setup_error(tiny_model_dir, tmp_path, monkeypatch):
    """Even when the other files' records make the bad ones a minority, one file with no readable record means a
    wrong root or a wrong file, not a few bad samples: refused before the model loads."""
    bad = images(tmp_path, 2)
    for i, r in enumerate(bad):
        (tmp_path / f"{i}.jpg").write_bytes(b"\xff\xd8\xff junk")
        r["image"] = str(tmp_path / f"{i}.jpg")
    good = images(tmp_path, 3)
    monkeypatch.setattr(eval_run, "_evaluate_hf", lambda *a: pytest.fail("the model must not load"))
    files = [write_records(tmp_path / "bad.json", bad), write_records(tmp_path / "good.json", good)]
    with pytest.raises(EvalError, match=r"setup looks wrong, not a few bad files: no usable record in .*bad.json"):
        eval_run.evaluate(_args(tiny_model_dir, files, tmp_path / "out", mode="expected", no_think=True))


def test_an_atomic_write_is_whole_on_disk_before_the_rename(tmp_path, durability_log):
    """metrics.json and the settings are written through write_atomic: fsync sees the whole text, flushed out of
    Python's buffer, before the rename makes it visible (a power cut never exposes an empty metrics.json)."""
    text = json.dumps({"srcc": 0.5, "note": "é"}, indent=2) + "\n"
    synced = durability_log(store)
    path = tmp_path / "metrics.json"
    store.write_atomic(str(path), text)
    assert path.read_text(encoding="utf-8") == text
    assert synced == [len(text.encode()), ("replace", "metrics.json")]
    assert not (tmp_path / "metrics.json.tmp").exists()


@pytest.mark.parametrize("text, value", [("true", True), ("YES", True), ("1", True), ("False", False), ("no", False),
                                         ("0", False)])
def test_use_record_question_reads_true_and_false_words(text, value):
    parser = argparse.ArgumentParser()
    eval_run.add_arguments(parser)
    args = parser.parse_args(["--model", "m", "--data", "d.json", "--out", "o", "--use_record_question", text])
    assert args.use_record_question is value
    assert parser.parse_args(["--model", "m", "--data", "d.json", "--out", "o"]).use_record_question is None


def test_use_record_question_refuses_other_words(capsys):
    parser = argparse.ArgumentParser()
    eval_run.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--data", "d.json", "--out", "o", "--use_record_question", "maybe"])
    assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def test_evaluate_says_which_records_it_skips_and_how_many_of_other_tasks_it_ignores(tiny_model_dir, tmp_path,
                                                                                       scripted_generate, capsys):
    """Nothing is dropped uncounted: a record that cannot be evaluated is named on stderr with its file, index and
    reason, and records of other task types are counted in one line; the rest are evaluated."""
    _, script = scripted_generate
    recs = images(tmp_path, 2)
    recs.insert(1, {"image": recs[0]["image"], "type": "choice_image", "solution": "A", "options": ["A. x", "B. y"]})
    recs.append({"image": "missing.jpg", "type": "scoring_image", "solution": 3.0})
    data = write_records(tmp_path / "d.json", recs)
    script["texts"] = [["<answer>Score: 2</answer>"], ["<answer>Score: 3</answer>"]]
    eval_run.evaluate(_args(tiny_model_dir, [data], tmp_path / "out", mode="greedy"))
    err = capsys.readouterr().err
    assert f"skipped: {data}:3: " in err and "missing.jpg" in err
    assert "ignored 1 record(s) of other task types (only scoring records are evaluated)" in err
    assert [r["prediction"] for r in rows_of(tmp_path / "out")] == ["2.000000", "3.000000"]


def test_a_failed_atomic_write_names_the_file_and_reason_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    path.write_text("old\n")

    def failing_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(store.os, "fsync", failing_fsync)
    with pytest.raises(EvalError, match=rf"^cannot write {path}: Input/output error$"):
        store.write_atomic(str(path), "new\n")
    assert path.read_text() == "old\n" and not (tmp_path / "metrics.json.tmp").exists()


def test_reading_predictions_drops_and_counts_cut_or_invalid_rows_only(tmp_path):
    """A row cut inside a quoted field, a non-numeric or infinite MOS or prediction, a missing sample id or an extra
    field is dropped and counted (it is predicted again); the good rows around it are kept."""
    good = [_prediction(f"s{i}", "d", 2.0 + i, f"{1.5 + i:.6f}") for i in range(3)]
    path = str(tmp_path / "predictions.csv")
    store.append(path, good)
    header = ",".join(store.FIELDS)
    text = (tmp_path / "predictions.csv").read_text()
    bad_rows = ["x1,d,a.jpg,not-a-number,2.0,c,\r\n", "x2,d,a.jpg,3.0,inf,c,\r\n", ",d,a.jpg,3.0,2.0,c,\r\n",
                "x3,d,a.jpg,3.0,2.0,c,,extra\r\n"]
    assert text.startswith(header)
    (tmp_path / "predictions.csv").write_text(text + "".join(bad_rows), newline="")
    rows, dropped = store.read(path)
    assert sorted(rows) == ["s0", "s1", "s2"] and dropped == 4
    (tmp_path / "predictions.csv").write_text(text + 's9,d,a.jpg,3.0,2.0,"a completion cut', newline="")
    rows, dropped = store.read(path)
    assert sorted(rows) == ["s0", "s1", "s2"] and dropped == 1


def test_the_settings_that_identify_predictions_name_a_hub_model_and_a_dropped_record_question(tmp_path):
    """settings.json decides whether --out can be resumed: a hub id is the model as given (no files to fingerprint),
    and --use_record_question false (another prompt) is recorded, while the default leaves older files valid."""
    from vqrl.eval.settings import eval_settings

    args = _args("Qwen/Qwen2.5-VL-7B-Instruct", ["d.json"], tmp_path / "out")
    base = eval_settings(args)
    assert base["model"] == "Qwen/Qwen2.5-VL-7B-Instruct" and "model_files" not in base
    assert "use_record_question" not in base
    args.use_record_question = True
    assert eval_settings(args) == base
    args.use_record_question = False
    assert eval_settings(args) == {**base, "use_record_question": False}


def test_stored_completions_are_decoded_without_special_tokens(tiny_model_dir, tmp_path, scripted_generate):
    """A control token the model emits (a stray <|vision_start|> or <|im_start|>) is not text: predictions.csv keeps
    the readable completion, and the score is parsed from it."""
    _, script = scripted_generate
    data = write_records(tmp_path / "d.json", images(tmp_path, 2))
    script["texts"] = [["<|vision_start|><answer>Score: 3</answer>"], ["<|im_start|>no score<|im_start|>"]]
    eval_run.evaluate(_args(tiny_model_dir, [data], tmp_path / "out", mode="greedy"))
    rows = rows_of(tmp_path / "out")
    assert [(r["prediction"], r["completion"]) for r in rows] == [("3.000000", "<answer>Score: 3</answer>"),
                                                                   ("", "no score")]


def test_a_stale_row_is_refused_even_after_records_not_yet_predicted():
    """Every resumed row is checked against its record, not only those before the first record without a row."""
    from vqrl.eval.records import refuse_stale_rows

    records = [{"sample_id": "a", "type": "scoring_image", "image": "a.jpg", "solution": 3.0},
               {"sample_id": "b", "type": "scoring_image", "image": "b.jpg", "solution": 4.0}]
    done = {"b": {"path": "b.jpg", "mos": "2.0"}}  # b's MOS changed since; a was never predicted
    with pytest.raises(EvalError, match=r"the row for sample 'b' is for b.jpg \(MOS 2.0\), but the data now says "
                                        r"b.jpg \(MOS 4.0\)"):
        refuse_stale_rows(done, records, "p.csv")
    refuse_stale_rows({"b": {"path": "b.jpg", "mos": "4.0"}}, records, "p.csv")  # the same record: accepted


def test_read_predictions_gives_the_whole_rows_by_sample_id(tmp_path):
    path = str(tmp_path / "predictions.csv")
    rows = [_prediction("s0", "d", 2.0, "1.500000"), _prediction("s1", "d", 3.0, "", "unreadable media: x")]
    store.append(path, rows)
    assert eval_run.read_predictions(path) == {r["sample_id"]: {k: str(v) for k, v in r.items()} for r in rows}
    assert eval_run.read_predictions(str(tmp_path / "none.csv")) == {}


def test_a_row_the_csv_reader_cannot_read_is_dropped_and_counted(tmp_path):
    """A row cut inside a quoted field that runs past the csv module's field limit raises csv.Error in the reader:
    the rows before it are kept, and it counts as one dropped row (to be predicted again)."""
    path = str(tmp_path / "predictions.csv")
    good = [_prediction(f"s{i}", "d", 2.0 + i, f"{1.5 + i:.6f}") for i in range(2)]
    store.append(path, good)
    with open(path, "a", newline="", encoding="utf-8") as f:
        f.write('s9,d,a.jpg,3.0,2.0,"' + "x" * 200_000)
    rows, dropped = store.read(path)
    assert rows == {r["sample_id"]: {k: str(v) for k, v in r.items()} for r in good} and dropped == 1


def test_each_record_gets_its_own_score_around_an_unreadable_one_and_a_short_answer_is_refused(monkeypatch):
    """score_records hands the readable records to the model and puts each result back on its record; a scorer
    that returns fewer results than records is an error, never scores left on the wrong records or missing."""

    class Loader:
        def parts(self, rec):
            if rec["bad"]:
                raise OSError("Input/output error")
            return [{"type": "image", "image": rec["i"]}]

    batch = [{"i": i, "bad": i == 1} for i in range(4)]
    seen = []

    def scorer(model, processor, recs, media, prompt_cfg, args):
        seen.append(([r["i"] for r in recs], [m[0]["image"] for m in media]))
        return [(float(r["i"]), f"c{r['i']}") for r in recs]

    monkeypatch.setattr(eval_run, "_score_decoded", scorer)
    out = eval_run.score_records(None, None, batch, Loader(), None, None)
    assert seen == [([0, 2, 3], [0, 2, 3])]
    assert out == [(0.0, "c0", ""), (None, "", "unreadable media: OSError: Input/output error"), (2.0, "c2", ""),
                   (3.0, "c3", "")]
    monkeypatch.setattr(eval_run, "_score_decoded", lambda *a: scorer(*a)[:-1])
    with pytest.raises(ValueError, match="zip"):
        eval_run.score_records(None, None, batch, Loader(), None, None)
    monkeypatch.setattr(eval_run, "_score_decoded", scorer)
    assert eval_run._score_batch(None, None, [batch[0], batch[2]], Loader(), None, None) == [(0.0, "c0"),
                                                                                            (2.0, "c2")]
    with pytest.raises(OSError, match="Input/output error"):
        eval_run._score_batch(None, None, batch, Loader(), None, None)


def test_the_scatter_plots_each_scored_pair_against_the_identity_line(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt  # scatter itself selects the Agg backend

    drawn = []
    real = plt.subplots
    monkeypatch.setattr(plt, "subplots", lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    rows = [{"mos": "2.0", "prediction": "2.5"}, {"mos": "4", "prediction": ""}, {"mos": "3.5", "prediction": "1.25"}]
    eval_run.scatter(rows, "koniq", str(tmp_path / "s.png"))
    (fig, ax), = drawn
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert ax.collections[0].get_offsets().tolist() == [[2.0, 2.5], [3.5, 1.25]]  # the unparsed row is left out
    (line,) = ax.lines
    assert line.get_xydata().tolist() == [[1.0, 1.0], [5.0, 5.0]]  # prediction = MOS
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("MOS", "prediction", "koniq")
    assert ax.get_xlim() == ax.get_ylim() == (0.8, 5.2)
    assert not plt.fignum_exists(fig.number)  # closed: one figure per dataset would pile up in a long summary
    drawn.clear()
    eval_run.scatter([{"mos": "4", "prediction": ""}], "none", str(tmp_path / "e.png"))
    (fig, ax), = drawn
    assert not ax.collections and len(ax.lines) == 1 and (tmp_path / "e.png").is_file()


def test_one_dataset_has_no_overall_its_table_rounds_to_4_places_and_only_this_runs_records_count(tmp_path, capsys):
    pred_path = str(tmp_path / "predictions.csv")
    store.append(pred_path, [
        _prediction("x1", "koniq/train", 1.0, "1.500000"), _prediction("x2", "koniq/train", 3.0, "2.500000"),
        _prediction("x3", "koniq/train", 2.0, ""), _prediction("old", "koniq/train", 5.0, "1.000000")])
    records = [{"sample_id": s} for s in ("x1", "x2", "x3", "not-yet")]
    metrics = eval_run.summarize(pred_path, str(tmp_path), records=records)
    assert list(metrics) == ["koniq/train"]  # one dataset: no "overall" beside it
    assert (metrics["koniq/train"]["n"], metrics["koniq/train"]["n_valid"]) == (3, 2)  # "old" is another run's row
    assert (tmp_path / "scatter_koniq_train.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "metrics.json").read_text() == json.dumps(metrics, indent=2) + "\n"  # for people to read
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == ["koniq/train", "3", "1.0", "1.0", "1.0", "0.5", "0.3333", "0", "0"]


def test_sampled_completions_are_reproducible_under_the_same_seed(tiny_model_dir, tmp_path):
    """--mode sample draws from the model under --seed: the same seed gives the same completions (a rerun or a
    resumed run samples alike)."""
    from vqrl.eval.records import read_eval_data
    from vqrl.eval.settings import apply_model_settings

    records = read_eval_data([write_records(tmp_path / "d.json", images(tmp_path, 1))], None, None).records

    def completions(seed, name):
        args = _args(tiny_model_dir, ["d.json"], tmp_path, mode="sample", num_samples=2, no_think=True, max_new_tokens=6,
                     seed=seed)
        apply_model_settings(args)
        eval_run._evaluate_hf(args, records, str(tmp_path / name))
        return [r["completion"] for r in rows_of_file(tmp_path / name)]

    first = completions(3, "a.csv")
    assert completions(3, "b.csv") == first and all(first)
    assert completions(4, "c.csv") != first  # the seed is used, not a constant one


def rows_of_file(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_rows_written_in_pieces_by_short_writes_arrive_whole(tmp_path, monkeypatch):
    """os.write may write fewer bytes than asked (a signal, a pipe, a nearly full quota): append writes the rest,
    from the first unwritten byte, until every byte is on disk."""
    real, sizes = os.write, []

    def short_write(fd, data):
        sizes.append(real(fd, bytes(data[:7])))
        return sizes[-1]

    monkeypatch.setattr(store.os, "write", short_write)
    path = str(tmp_path / "predictions.csv")
    rows = [_prediction("s0", "d", 2.0, "1.500000", ""), _prediction("s1", "d", 3.0, "", "unreadable media: é")]
    store.append(path, rows)
    monkeypatch.undo()
    expected = (",".join(store.FIELDS) + "\r\n" + "s0,d,s0.jpg,2.0,1.500000,,\r\n"
                + "s1,d,s1.jpg,3.0,,,unreadable media: é\r\n")
    assert open(path, encoding="utf-8", newline="").read() == expected
    assert len(sizes) > 1 and sum(sizes) == len(expected.encode("utf-8"))


def test_digit_token_ids_map_every_digit_0_to_9_and_refuse_a_split_digit():
    from vqrl.eval.inference import digit_token_ids

    class Tok:
        def __init__(self, split=None):
            self.split = split

        def encode(self, text, add_special_tokens=False):
            assert add_special_tokens is False
            return [1, 2] if text == self.split else [100 + int(text)]

    assert digit_token_ids(Tok()) == {d: 100 + d for d in range(10)}
    with pytest.raises(ValueError, match="tokenizer spells digit 9 as 2 tokens"):
        digit_token_ids(Tok(split="9"))


@pytest.mark.parametrize("do_sample, expected", [(True, 0.7), (False, None)])
def test_the_sampling_temperature_reaches_generation_only_when_sampling(tiny_model_dir, monkeypatch, do_sample,
                                                                         expected):
    """--temperature shapes --mode sample; greedy decoding gets none (HF would warn that it is ignored)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vqrl.eval.inference import generate

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_model_dir, padding_side="left")
    seen = {}

    def fake_generate(input_ids, **kwargs):
        seen.update(kwargs)
        return torch.cat([input_ids, torch.full((input_ids.size(0), 1), 11)], dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    prompt = processor.tokenizer.encode("Rate the photo.", add_special_tokens=False)
    assert generate(model, processor, [prompt], [{}], 1, do_sample=do_sample, temperature=0.7) == [[11]]
    assert seen["do_sample"] is do_sample and seen["temperature"] == expected


def test_an_empty_predictions_file_is_a_fresh_start_not_rows_without_settings(tmp_path):
    """A predictions file of 0 bytes (a run killed before its first row) holds nothing to protect: the folder is
    claimed and its settings written, where a file with rows but no settings is refused."""
    (tmp_path / store.PREDICTIONS).write_text("")
    store.claim(str(tmp_path), {"model": "m"})
    assert json.loads((tmp_path / store.SETTINGS).read_text())["model"] == "m"
    (tmp_path / store.SETTINGS).unlink()
    (tmp_path / store.PREDICTIONS).write_text("sample_id,score\n")
    with pytest.raises(EvalError, match="holds predictions but settings.json beside it is missing"):
        store.claim(str(tmp_path), {"model": "m"})
