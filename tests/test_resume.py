"""A run stopped after step k and resumed continues at k+1 and sees the samples the uninterrupted run saw."""

from __future__ import annotations

import json
import os

import pytest
from transformers import TrainerCallback

from trainer_utils import EXAMPLES, make_trainer
from vqrl.training import checkpoints


class StopAfter(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def _seen(path):
    rows = [json.loads(line) for line in open(path)]
    order = {}
    for r in rows:
        order.setdefault(r["step"], []).append(r["sample_id"])
    return order


def _run(model_dir, out, log, monkeypatch, stop_after=None, resume=None):
    monkeypatch.setenv("VQRL_TEST_RECORD", str(log))
    extra = {"resume": resume} if resume else {}
    trainer = make_trainer(model_dir, out, [_images_only(out)], reward_funcs=["recording:record_batch"], max_steps=8,
                           max_pixels=3136, per_device_train_batch_size=4, num_generations=2, save_strategy="steps",
                           save_steps=2, save_total_limit=2, **extra)
    if stop_after:
        trainer.add_callback(StopAfter(stop_after))
    ckpt = checkpoints.resolve_resume(resume, str(out))
    trainer.train(resume_from_checkpoint=ckpt)
    return trainer


def test_resume_continues_with_the_same_data_order(tiny_model_dir, tmp_path, monkeypatch):
    # 10 image records, 2 prompts per step: an epoch is 5 steps; the run is cut at step 6, inside the SECOND epoch,
    # so the resumed process must rebuild epoch 1's order from (seed, epoch), not replay epoch 0's
    _run(tiny_model_dir, tmp_path / "full", tmp_path / "full.jsonl", monkeypatch)
    full = _seen(tmp_path / "full.jsonl")
    assert sorted(full) == list(range(8))
    assert len({sid for step in range(5) for sid in full[step]}) == 10  # epoch 0 shows every record
    assert [full[s] for s in (5, 6, 7)] != [full[s] for s in (0, 1, 2)]  # epoch 1 is shuffled anew

    _run(tiny_model_dir, tmp_path / "cut", tmp_path / "cut.jsonl", monkeypatch, stop_after=6)
    assert checkpoints.latest_complete(str(tmp_path / "cut")).endswith("checkpoint-6")
    trainer = _run(tiny_model_dir, tmp_path / "cut", tmp_path / "cut.jsonl", monkeypatch, resume="auto")
    assert trainer.state.global_step == 8
    cut = _seen(tmp_path / "cut.jsonl")
    assert cut == full  # steps 0-5 before the stop, 6-7 after: same samples in the same order

    steps = [r["step"] for r in map(json.loads, open(tmp_path / "cut" / "metrics.jsonl")) if "loss" in r]
    assert steps == list(range(1, 9))  # every step logged exactly once across the restart


# ------------------------------------------------------------------------------------------ a run resumed at its end


@pytest.fixture(autouse=True)
def _one_thread():
    """These runs are tiny: one thread is faster than two on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images_only(out) -> str:
    """The example records with an image (no video decoding): with --max_pixels 3136 a step takes well under 1 s."""
    data = out.parent / "images.json"
    if not data.exists():
        records = [r for r in json.load(open(os.path.join(EXAMPLES, "RL_examples.json"))) if "image" in r]
        data.write_text(json.dumps(records))
    return str(data)


def _main_argv(model_dir, out, **overrides):
    from trainer_utils import flags

    data = _images_only(out)
    values = dict(reward_funcs=["recording:record_batch"], max_steps=3, max_pixels=3136, save_strategy="steps",
                  save_steps=1, save_total_limit=2, disable_tqdm="true")
    values.update(overrides)
    return flags(model_dir, out, [data], **values)


def _train_rows(out):
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    return [r["step"] for r in rows if "loss" in r], [r["step"] for r in rows if "train_runtime" in r]


def _checkpoint_dirs(out):
    return sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))


def test_rerunning_a_finished_run_trains_no_step(tiny_model_dir, tmp_path, monkeypatch):
    from vqrl.grpo import main

    out, record = tmp_path / "run", tmp_path / "seen.jsonl"
    monkeypatch.setenv("VQRL_TEST_RECORD", str(record))
    assert main(_main_argv(tiny_model_dir, out)) == 0
    seen = record.read_text()
    final_weights = (out / "final" / "model.safetensors").read_bytes()
    for _ in range(2):  # a finished run re-run, by hand or by a watchdog, any number of times
        assert main(_main_argv(tiny_model_dir, out, resume="auto")) == 0
    assert record.read_text() == seen  # no generation, no reward call: no training step
    assert _checkpoint_dirs(out) == ["checkpoint-2", "checkpoint-3"]  # no checkpoint-4
    assert _train_rows(out) == ([1, 2, 3], [3])  # each step once, one end-of-run row
    assert (out / "final" / "model.safetensors").read_bytes() == final_weights


def test_crash_in_the_final_save_then_rerun_publishes_the_last_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import Trainer

    from vqrl.grpo import main

    out, record = tmp_path / "run", tmp_path / "seen.jsonl"
    monkeypatch.setenv("VQRL_TEST_RECORD", str(record))
    real_save = Trainer.save_model

    def dies_in_final_save(self, output_dir=None, _internal_call=False):
        real_save(self, output_dir, _internal_call)
        if output_dir and os.path.basename(output_dir) == ".staging-final":
            raise KeyboardInterrupt("killed while writing final/")  # after the weights, before the rename

    monkeypatch.setattr(Trainer, "save_model", dies_in_final_save)
    with pytest.raises(KeyboardInterrupt):
        main(_main_argv(tiny_model_dir, out))
    monkeypatch.setattr(Trainer, "save_model", real_save)
    assert not (out / "final").exists()
    seen = record.read_text()

    assert main(_main_argv(tiny_model_dir, out, resume="auto")) == 0
    assert record.read_text() == seen  # no step 4
    assert _checkpoint_dirs(out) == ["checkpoint-2", "checkpoint-3"]
    assert _train_rows(out) == ([1, 2, 3], [3])
    assert checkpoints.marker_step(str(out / "final")) == 3
    assert (out / "final" / "model.safetensors").read_bytes() == (out / "checkpoint-3" / "model.safetensors").read_bytes()
    assert not (out / "final" / "optimizer.pt").exists() and (out / "final" / "tokenizer.json").exists()
    assert not any(p.name.startswith(".staging") for p in out.iterdir())


def test_crash_while_saving_the_last_checkpoint_redoes_that_step_once(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import Trainer

    from vqrl.grpo import main

    out, record = tmp_path / "run", tmp_path / "seen.jsonl"
    monkeypatch.setenv("VQRL_TEST_RECORD", str(record))
    real = Trainer._save_rng_state

    def dies_saving_checkpoint_3(self, output_dir):
        if self.state.global_step == 3:
            raise KeyboardInterrupt("killed while writing checkpoint-3")
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", dies_saving_checkpoint_3)
    with pytest.raises(KeyboardInterrupt):
        main(_main_argv(tiny_model_dir, out))
    monkeypatch.setattr(Trainer, "_save_rng_state", real)
    assert _checkpoint_dirs(out) == ["checkpoint-1", "checkpoint-2"]  # the half-written one stays in staging
    assert checkpoints.latest_complete(str(out)).endswith("checkpoint-2")

    assert main(_main_argv(tiny_model_dir, out, resume="auto")) == 0
    steps = [json.loads(line)["step"] for line in open(record)]
    assert sorted(set(steps)) == [0, 1, 2] and steps.count(2) == 2 * 4  # step 3 (state step 2) seen twice: redone
    assert _checkpoint_dirs(out) == ["checkpoint-2", "checkpoint-3"]
    assert _train_rows(out) == ([1, 2, 3], [3])
    assert checkpoints.marker_step(str(out / "final")) == 3


def test_resume_env_is_honoured_and_the_flag_wins(tiny_model_dir, tmp_path, monkeypatch):
    from vqrl.grpo import main

    out, record = tmp_path / "run", tmp_path / "seen.jsonl"
    monkeypatch.setenv("VQRL_TEST_RECORD", str(record))
    assert main(_main_argv(tiny_model_dir, out, max_steps=2)) == 0
    record.write_text("")
    monkeypatch.setenv("VQRL_RESUME", "auto")  # what the watchdog sets on a restart
    assert main(_main_argv(tiny_model_dir, out, max_steps=3)) == 0
    assert sorted({json.loads(line)["step"] for line in open(record)}) == [2]  # only the third step was trained
    record.write_text("")
    assert main(_main_argv(tiny_model_dir, out, max_steps=3, resume="none")) == 0  # --resume none: afresh
    assert sorted({json.loads(line)["step"] for line in open(record)}) == [0, 1, 2]
    assert _train_rows(out) == ([1, 2, 3], [3])


def test_rerunning_a_finished_epoch_based_run_trains_no_step(tiny_model_dir, tmp_path, monkeypatch):
    """Without --max_steps the Trainer's own count (epochs x steps per epoch) decides that the run is finished."""
    from vqrl.grpo import main

    out, record = tmp_path / "run", tmp_path / "seen.jsonl"
    monkeypatch.setenv("VQRL_TEST_RECORD", str(record))
    argv = _main_argv(tiny_model_dir, out, max_steps=-1, num_train_epochs=1, save_steps=5)  # 10 images, 2 a step
    assert main(argv) == 0
    seen = record.read_text()
    assert _checkpoint_dirs(out) == ["checkpoint-5"]
    assert main(argv + ["--resume", "auto"]) == 0
    assert record.read_text() == seen and _checkpoint_dirs(out) == ["checkpoint-5"]
    assert _train_rows(out) == ([1, 2, 3, 4, 5], [5])


def test_model_only_checkpoints_resume_with_fresh_optimizer_but_not_under_deepspeed(tiny_model_dir, tmp_path, caplog):
    """--save_only_model (a 7B ZeRO-3 full checkpoint is ~115 GB, its weights 16 GB): a checkpoint without optimizer
    state resumes its weights and step with a fresh optimizer (said in the log); under DeepSpeed, whose resume reads
    its own optimizer shards, it is refused before any model loads, with the way out."""
    import logging

    from vqrl.config_checks import ConfigError, resolve_resume
    from vqrl.grpo import main

    out = tmp_path / "run"
    data = os.path.join(EXAMPLES, "RL_examples.json")
    common = ["--model_name_or_path", tiny_model_dir, "--output_dir", str(out), "--data_files", data, "--image_root",
              EXAMPLES, "--video_root", EXAMPLES, "--per_device_train_batch_size", "4", "--num_generations", "2",
              "--max_completion_length", "8", "--use_cpu", "true", "--report_to", "none", "--save_strategy", "steps",
              "--save_steps", "1", "--save_only_model", "true", "--max_pixels", "3136", "--progress", "logs"]
    assert main([*common, "--max_steps", "1"]) == 0
    ckpt = checkpoints.latest_complete(str(out))
    assert ckpt.endswith("checkpoint-1") and not checkpoints.has_optimizer_state(ckpt)
    with pytest.raises(ConfigError, match=r"holds no optimizer state .*--model_name_or_path .*checkpoint-1"):
        resolve_resume("auto", str(out), deepspeed=True)
    with caplog.at_level(logging.WARNING):
        assert main([*common, "--max_steps", "2", "--resume", "auto"]) == 0
    assert "fresh optimizer" in caplog.text
    assert checkpoints.marker_step(checkpoints.latest_complete(str(out))) == 2
    # a full checkpoint is recognised as such
    ckpt_dir = tmp_path / "full" / "checkpoint-3"
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / "optimizer.pt").write_bytes(b"x")
    assert checkpoints.has_optimizer_state(str(ckpt_dir))
    (ckpt_dir / "optimizer.pt").unlink()
    (ckpt_dir / "global_step3").mkdir()
    assert checkpoints.has_optimizer_state(str(ckpt_dir))


def test_resuming_loads_every_saved_weight_into_the_live_model(tiny_model_dir, tmp_path, caplog):
    """A resumed plain (not DeepSpeed/FSDP/peft) model gets every saved tensor, under the live module names, with no
    key left out or unexpected; a checkpoint folder without weights is not read as one."""
    import logging

    import torch

    trainer = make_trainer(tiny_model_dir, tmp_path / "run", [os.path.join(EXAMPLES, "RL_examples.json")])
    model = trainer.model
    ckpt = tmp_path / "checkpoint-1"
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.save_pretrained(str(ckpt))
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    with caplog.at_level(logging.WARNING):
        trainer._load_from_checkpoint(str(ckpt))
    live = model.state_dict()
    assert live.keys() == saved.keys()
    assert all(torch.equal(live[k], saved[k]) for k in saved), [k for k in saved if not torch.equal(live[k], saved[k])]
    assert "missing" not in caplog.text.lower() and "unexpected" not in caplog.text.lower()


@pytest.mark.parametrize("engine", ["is_deepspeed_enabled", "is_fsdp_enabled"])
def test_resuming_under_deepspeed_or_fsdp_goes_through_the_librarys_loader(tiny_model_dir, tmp_path, monkeypatch,
                                                                            engine):
    """DeepSpeed and FSDP hold partitioned parameters and read their own shards: their resume must go through
    transformers' loader even when the checkpoint also holds consolidated model.safetensors, never through the
    plain whole-model copy (which would write full tensors into partitioned ones)."""
    from transformers import Trainer

    trainer = make_trainer(tiny_model_dir, tmp_path / "run", [os.path.join(EXAMPLES, "RL_examples.json")])
    ckpt = tmp_path / "checkpoint-1"
    trainer.model.save_pretrained(str(ckpt))
    calls = []
    monkeypatch.setattr(Trainer, "_load_from_checkpoint",
                        lambda self, resume_from_checkpoint, model=None: calls.append(resume_from_checkpoint))
    monkeypatch.setattr(type(trainer.model), "from_pretrained",
                        classmethod(lambda cls, *a, **k: pytest.fail("the plain whole-model path was taken")))
    monkeypatch.setattr(trainer, engine, True, raising=False)
    trainer._load_from_checkpoint(str(ckpt))
    assert calls == [str(ckpt)]
