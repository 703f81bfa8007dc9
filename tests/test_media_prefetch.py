"""Media decoded ahead in background threads: the same rows, failures counted the same way, decode off the caller's
thread."""

from __future__ import annotations

import os
import threading

import torch

from vqrl.data import dataset as D
from vqrl.data.media import VisionSpec
from vqrl.data.prompts import PromptConfig

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
RECORDS = [
    {"image": os.path.join(EXAMPLES, "images", "chelsea.jpg"), "solution": 4.5, "type": "scoring_image",
     "sample_id": "a"},
    {"video": os.path.join(EXAMPLES, "videos", "rocket_pan_l0.mp4"), "solution": 3.0, "type": "scoring_video",
     "sample_id": "b"},
    {"image": "/nonexistent/missing.jpg", "solution": 2.0, "type": "scoring_image", "sample_id": "c"},
    {"image": os.path.join(EXAMPLES, "images", "camera.jpg"), "solution": 1.5, "type": "scoring_image",
     "sample_id": "d"},
]


def builder(workers):
    loader = D.MediaLoader(VisionSpec(), None, None, workers=workers)
    return D.RowBuilder([dict(r) for r in RECORDS], loader, PromptConfig())


def media(row):
    """The row's media as comparable values: image bytes, video tensors."""
    out = []
    for message in row["prompt"]:
        for part in message["content"]:
            if isinstance(part, dict) and part.get("type") == "image":
                out.append(part["image"].tobytes())
            elif isinstance(part, dict) and part.get("type") == "video":
                out.append(part["video"])
    return out


def test_prefetched_rows_equal_decoded_on_the_spot_and_failures_count_the_same(monkeypatch):
    threads = []
    original = D.MediaLoader._decode

    def spy(self, kind, path):
        threads.append(threading.current_thread().name)
        return original(self, kind, path)

    monkeypatch.setattr(D.MediaLoader, "_decode", spy)
    plain, ahead = builder(0), builder(2)
    ahead.prefetch([0, 0, 1, 1, 2, 2, 3, 3])  # as the sampler yields them: G copies of each index
    ahead.loader._pool.shutdown(wait=True)
    assert sorted(threads).count("MainThread") == 0 and len(threads) == 4  # each medium once, in the background
    for i in range(4):
        a, b = plain.row(i), ahead.row(i)
        assert a["sample_id"] == b["sample_id"] and a["solution"] == b["solution"]
        for x, y in zip(media(a), media(b), strict=True):
            assert torch.equal(x, y) if torch.is_tensor(x) else x == y
    assert plain.row(2)["sample_id"] == ahead.row(2)["sample_id"] == "d"  # the missing file replaced by the next
    assert plain.failures.keys() == ahead.failures.keys() == {2}
    assert "FileNotFoundError" in ahead.failures[2]
    assert threads[4:] == ["MainThread"] * 4  # the plain builder decoded on the caller's thread (the failure too)


def test_without_workers_prefetch_does_nothing():
    b = builder(0)
    b.prefetch([0, 1])
    assert b.loader._pool is None and not b.loader._pending


def test_sampler_order_is_unchanged_and_windows_are_prefetched_ahead():
    from vqrl.trainers.base import EpochRepeatSampler

    def sampler():
        return EpochRepeatSampler(data_source=list(range(10)), mini_repeat_count=2, batch_size=4, repeat_count=1,
                                  shuffle=True, seed=3)

    plain, ahead = sampler(), sampler()
    calls = []
    ahead.prefetch, ahead.prefetch_ahead = calls.append, 8
    plain.set_epoch(1), ahead.set_epoch(1)
    order = list(plain)
    seen = []
    for position, index in enumerate(ahead):
        assert index in calls[position // 4]  # its window was asked for before it was yielded
        seen.append(index)
    assert seen == order and len(calls) == len(order) // 4
    assert calls[0] == order[:8] and calls[1] == order[4:12]


def test_training_with_prefetch_workers_sees_the_same_samples(tiny_model_dir, tmp_path, monkeypatch):
    """Two-step runs with and without background decoding train on the same records in the same order."""
    from trainer_utils import make_trainer, write_records

    data = write_records(tmp_path / "d.json", [
        {"image": "images/chelsea.jpg", "solution": 4.5, "type": "scoring_image"},
        {"video": "videos/rocket_pan_l0.mp4", "solution": 3.0, "type": "scoring_video"},
        {"image": "images/camera.jpg", "solution": 1.5, "type": "scoring_image"},
    ])
    seen = {}
    for workers in (0, 2):
        record = tmp_path / f"seen{workers}.jsonl"
        monkeypatch.setenv("VQRL_TEST_RECORD", str(record))
        trainer = make_trainer(tiny_model_dir, tmp_path / f"o{workers}", [data], reward_funcs=["recording:record_batch"],
                               media_prefetch_workers=workers, max_steps=2)
        trainer.train()
        assert (trainer.row_builder.loader._pool is not None) == (workers > 0)
        seen[workers] = [line.split('"text"')[0] for line in record.read_text().splitlines()]
    assert seen[0] == seen[2] and len(seen[0]) == 2 * 4
