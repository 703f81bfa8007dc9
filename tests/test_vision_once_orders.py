"""Vision-once in the orders TRL produces besides "a prompt's completions together": interleaved groups, TRL's
per-sequence shuffle, chunks that straddle groups, prompts with two images, and the losses whose result depends on
the micro-batch partition (bnpo, the top-entropy mask, the entropy bonus), which must keep TRL's own shuffle.

Each check compares against the per-sequence path (trainer.vision_once = False) on the same batch (CPU, fp32).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import trl.trainer.grpo_trainer as trl_grpo

from trainer_utils import count_vision_tower, make_trainer, write_records
from vqrl.modeling import vision as V
from vqrl.modeling import vision_once

G = 2
RECORDS = [
    {"image": "images/chelsea.jpg", "solution": 4.5, "type": "scoring_image"},
    # two images in one prompt (the pristine reference first): a sequence carries 2 grids, so offsets matter
    {"image": "perception/images/astronaut_000.png", "reference": "perception/images/reference/astronaut.png",
     "solution": "darken", "distortion": "darken", "severity": 4, "bbox": [71, 68, 179, 163], "mode": "local",
     "type": "distortion_image", "question": "Which distortion was applied to the second image?"},
    {"video": "videos/rocket_pan_l0.mp4", "solution": 3.6, "type": "scoring_video"},
    {"image": "images/degraded/chelsea_l3.jpg", "solution": 1.4, "type": "scoring_image"},
]
COMPLETION_LEN = 6


# ------------------------------------------------------------------------------------------------ helpers
def _trainer(model_dir, tmp_path, **overrides):
    torch.set_num_threads(1)
    data = write_records(tmp_path / "d.json", RECORDS)
    overrides.setdefault("per_device_train_batch_size", G * len(RECORDS))
    trainer = make_trainer(model_dir, tmp_path / "out", [data], reward_funcs=["recording:length_reward"],
                           freeze_vision_tower="false", num_generations=G, bf16="false", dtype="float32",
                           beta=0.04, **overrides)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    return trainer


def _grouped_batch(trainer) -> dict:
    """Every record × G completions of fixed token ids, a record's sequences together and sharing one vision dict
    (as the trainer encodes them), left-padded, with completions of different lengths."""
    rows = [trainer.train_dataset[i] for i in range(len(RECORDS))]
    trainer._pending_sample_ids = [r["sample_id"] for r in rows for _ in range(G)]
    try:
        ids, _, _ = trainer._tokenize_prompts([r["prompt"] for r in rows for _ in range(G)])
        vision = trainer._pending_vision
    finally:
        trainer._pending_vision = trainer._pending_sample_ids = None
    assert [int(v["image_grid_thw"].shape[0]) if "image_grid_thw" in v else 0 for v in vision[::G]] == [1, 2, 0, 1]
    width, pad = max(map(len, ids)), trainer._tokenizer.pad_token_id
    n = len(ids)
    text_ids = max(trainer._vision_token_ids) + 1  # plain text: above the vision special tokens
    gen = torch.Generator().manual_seed(0)
    completion_mask = torch.ones(n, COMPLETION_LEN, dtype=torch.long)
    for i, length in enumerate(torch.randint(2, COMPLETION_LEN + 1, (n,), generator=gen).tolist()):
        completion_mask[i, length:] = 0
    return {
        "prompt_ids": torch.tensor([[pad] * (width - len(p)) + p for p in ids]),
        "prompt_mask": (torch.arange(width) >= torch.tensor([width - len(p) for p in ids])[:, None]).long(),
        "completion_ids": torch.randint(text_ids, 200, (n, COMPLETION_LEN), generator=gen),
        "completion_mask": completion_mask,
        "advantages": torch.randn(n, generator=gen),
        "ref_per_token_logps": -5 + torch.randn(n, COMPLETION_LEN, generator=gen) * 0.1,
        "num_items_in_batch": completion_mask.sum(),
        "vision": vision,
    }


def _reorder(batch: dict, order: list[int]) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            out[key] = value[order]
        elif isinstance(value, list):
            out[key] = [value[i] for i in order]
        else:
            out[key] = value
    return out


def _interleaved(n_groups: int) -> list[int]:
    """Sequence k of every group, then sequence k+1 of every group: no two neighbours share a prompt."""
    return [g * G + k for k in range(G) for g in range(n_groups)]


def _logps_entropies_grads(trainer, batch, once: bool, chunk: int):
    """Log-probs and entropies of the completions, and the gradient of a fixed weighted sum of both."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    model = trainer.model
    model.zero_grad()
    trainer.vision_once = once
    trainer._pending_vision = batch["vision"]
    seen, handle = count_vision_tower(trainer)
    try:
        logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
            model, ids, mask, COMPLETION_LEN, batch_size=chunk, compute_entropy=True)
    finally:
        trainer._pending_vision = None
        handle.remove()
    weights = torch.linspace(-1.0, 1.0, logps.numel()).view_as(logps)
    ((logps * weights).sum() + 0.1 * entropies.sum()).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), entropies.detach(), grads, dict(seen)


def _assert_close_grads(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert any(".visual." in k for k in a), "the vision tower got no gradient: the comparison would be vacuous"
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")


# ------------------------------------------------------------------------- log-probs, entropies, gradients
@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_interleaved_and_shuffled_orders_equal_the_per_sequence_path(tiny_models, tmp_path, arch):
    """Interleaved groups and a random per-sequence order (TRL's shuffle), in chunks of 3 that straddle groups:
    vision-once gives the per-sequence log-probs, entropies and gradients while encoding fewer patches."""
    trainer = _trainer(tiny_models(arch), tmp_path)
    grouped = _grouped_batch(trainer)
    n = len(grouped["vision"])
    shuffled = torch.randperm(n, generator=torch.Generator().manual_seed(5)).tolist()
    for order in (_interleaved(len(RECORDS)), shuffled):
        batch = _reorder(grouped, order)
        logps_on, ent_on, grads_on, work_on = _logps_entropies_grads(trainer, batch, True, chunk=3)
        logps_off, ent_off, grads_off, work_off = _logps_entropies_grads(trainer, batch, False, chunk=3)
        torch.testing.assert_close(logps_on, logps_off, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ent_on, ent_off, rtol=1e-5, atol=1e-5)
        _assert_close_grads(grads_on, grads_off)
        assert work_on["calls"] == work_off["calls"]
        # sequence i's log-probs belong to sequence i: each prompt's sequences differ from the others'
        assert not torch.allclose(logps_off[order.index(0)], logps_off[order.index(G)])

    # a whole interleaved batch in one chunk: every record is encoded once for its G sequences
    batch = _reorder(grouped, _interleaved(len(RECORDS)))
    *_, work_on = _logps_entropies_grads(trainer, batch, True, chunk=n)
    *_, work_off = _logps_entropies_grads(trainer, batch, False, chunk=n)
    assert work_on["rows"] * G == work_off["rows"]


def test_a_changed_reference_image_moves_only_its_own_sequences(tiny_model_dir, tmp_path):
    """Interleaved order: perturbing the first (reference) image of the two-image prompt changes the log-probs of
    that prompt's sequences only, wherever they sit in the batch (the expansion maps media to their sequences)."""
    trainer = _trainer(tiny_model_dir, tmp_path)
    order = _interleaved(len(RECORDS))
    batch = _reorder(_grouped_batch(trainer), order)
    two = next(v for v in batch["vision"] if v.get("image_grid_thw") is not None and len(v["image_grid_thw"]) == 2)
    rows_of_reference = int(two["image_grid_thw"][0].prod())
    changed = {**two, "pixel_values": two["pixel_values"].clone()}
    changed["pixel_values"][:rows_of_reference] += 1.0
    moved = {**batch, "vision": [changed if v is two else v for v in batch["vision"]]}
    for chunk in (5, len(order)):  # its sequences in two chunks, then all in one with the other prompts'
        before, *_ = _logps_entropies_grads(trainer, batch, True, chunk=chunk)
        after, *_ = _logps_entropies_grads(trainer, moved, True, chunk=chunk)
        differs = ((after - before).abs().amax(dim=1) > 1e-6).tolist()
        assert differs == [v is two for v in batch["vision"]], chunk


# ------------------------------------------------------- the micro-batch partition: TRL's or whole groups
def _micro_batches(trainer, batch: dict, once: bool) -> list[dict]:
    """TRL's _prepare_inputs on a fixed generation batch (generation replaced by `batch`)."""
    trainer._generate_and_score_completions = lambda inputs: dict(batch)
    trainer.vision_once, trainer._step, trainer._buffered_inputs = once, 0, None
    torch.manual_seed(11)
    trainer._prepare_inputs([{}])
    return trainer._buffered_inputs


def _step(trainer, micro: list[dict]):
    """Loss and gradients of one optimizer step over the micro-batches, as TRL's training_step sums them."""
    model = trainer.model
    model.zero_grad()
    loss = sum(trainer.compute_loss(model, m) for m in micro)
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _trl_order(n: int) -> list[int]:
    torch.manual_seed(11)
    return torch.randperm(n).tolist()


@pytest.mark.parametrize("options, visible", [
    ({"loss_type": "bnpo"}, True),
    ({"top_entropy_quantile": 0.5}, True),
    # a random tiny model's entropy is near log(vocab) at every token, so its per-micro-batch mean hardly moves
    ({"entropy_coef": 1.0}, False),
], ids=["bnpo", "top_entropy_mask", "entropy_bonus"])
def test_partition_dependent_losses_keep_trls_shuffle(tiny_model_dir, tmp_path, options, visible):
    """Where the loss depends on which sequences share a micro-batch, micro-batches are TRL's per-sequence shuffle
    with vision-once on too, and the step's loss and gradients equal the per-sequence path's."""
    trainer = _trainer(tiny_model_dir, tmp_path, gradient_accumulation_steps=2, per_device_train_batch_size=G * 2,
                       **options)
    assert trainer.args.steps_per_generation == 2
    assert trainer._groups_keep_result() is False
    batch = _grouped_batch(trainer)
    n = len(batch["vision"])
    on, off = _micro_batches(trainer, batch, True), _micro_batches(trainer, batch, False)
    expected = _reorder(batch, _trl_order(n))["completion_ids"]
    for micro in (on, off):
        assert torch.equal(torch.cat([m["completion_ids"] for m in micro]), expected)
    assert any(len({id(v) for v in m["vision"]}) > G for m in on), "TRL's shuffle kept groups: test is vacuous"
    loss_on, grads_on = _step(trainer, on)
    loss_off, grads_off = _step(trainer, off)
    torch.testing.assert_close(loss_on, loss_off, rtol=1e-4, atol=1e-5)
    _assert_close_grads(grads_on, grads_off)

    if visible:  # grouping these micro-batches would have changed the step: the check above is not vacuous
        grouped = [_reorder(batch, list(range(0, n // 2))), _reorder(batch, list(range(n // 2, n)))]
        loss_grouped, _ = _step(trainer, grouped)
        assert not torch.isclose(loss_grouped, loss_off, rtol=1e-4, atol=1e-6)


def test_interleaved_generation_batch_under_dapo(tiny_model_dir, tmp_path):
    """An interleaved generation batch (no run of sequences shares a prompt) under dapo with 2 micro-batches:
    shuffling by group degenerates to TRL's own order, and the step equals the per-sequence path."""
    trainer = _trainer(tiny_model_dir, tmp_path, gradient_accumulation_steps=2, per_device_train_batch_size=G * 2)
    assert trainer._groups_keep_result() is True
    batch = _reorder(_grouped_batch(trainer), _interleaved(len(RECORDS)))
    n = len(batch["vision"])
    on, off = _micro_batches(trainer, batch, True), _micro_batches(trainer, batch, False)
    expected = _reorder(batch, _trl_order(n))["completion_ids"]
    for micro in (on, off):
        assert torch.equal(torch.cat([m["completion_ids"] for m in micro]), expected)
    loss_on, grads_on = _step(trainer, on)
    loss_off, grads_off = _step(trainer, off)
    torch.testing.assert_close(loss_on, loss_off, rtol=1e-4, atol=1e-5)
    _assert_close_grads(grads_on, grads_off)


def test_grouped_generation_batch_under_dapo_gets_whole_groups(tiny_model_dir, tmp_path):
    """The default case, to contrast with the ones above: vision-once on, dapo, groups together -> micro-batches of
    whole groups in the order their first sequence lands in TRL's permutation; off -> TRL's own order."""
    trainer = _trainer(tiny_model_dir, tmp_path, gradient_accumulation_steps=2, per_device_train_batch_size=G * 2)
    batch = _grouped_batch(trainer)
    n = len(batch["vision"])
    on, off = _micro_batches(trainer, batch, True), _micro_batches(trainer, batch, False)
    assert [len({id(v) for v in m["vision"]}) for m in on] == [G, G]
    assert torch.equal(torch.cat([m["completion_ids"] for m in on]),
                       _reorder(batch, _expected_group_order([G] * len(RECORDS), _trl_order(n)))["completion_ids"])
    assert torch.equal(torch.cat([m["completion_ids"] for m in off]),
                       _reorder(batch, _trl_order(n))["completion_ids"])


# ---------------------------------------------------------------------------- the helpers, by construction
def _expected_group_order(sizes: list[int], perm: list[int]) -> list[int]:
    """Re-implementation from the docstring: groups ordered by where their first member lands in `perm`, members
    in their original order."""
    starts = [sum(sizes[:g]) for g in range(len(sizes))]
    landing = {seq: pos for pos, seq in enumerate(perm)}
    first = [min(landing[s] for s in range(starts[g], starts[g] + sizes[g])) for g in range(len(sizes))]
    order = sorted(range(len(sizes)), key=lambda g: first[g])
    return [s for g in order for s in range(starts[g], starts[g] + sizes[g])]


@pytest.mark.parametrize("sizes", [[2, 2, 2, 2], [3, 1, 2], [1, 1, 1, 1, 1], [5]])
def test_shuffle_by_group_orders_groups_by_first_landing(sizes):
    n = sum(sizes)
    dicts = [{"k": g} for g, size in enumerate(sizes) for _ in range(size)]
    vision = [dicts[sum(sizes[:g])] for g, size in enumerate(sizes) for _ in range(size)]
    batch = {"ids": torch.arange(n) * 10, "rows": torch.arange(2 * n).view(n, 2), "vision": vision,
             "names": [f"s{i}" for i in range(n)], "scalar": torch.tensor(3.0), "none": None}
    torch.manual_seed(7)
    out = vision_once.shuffle_by_group(batch)
    after = torch.rand(1)
    torch.manual_seed(7)
    perm = torch.randperm(n).tolist()
    assert torch.equal(torch.rand(1), after), "the RNG stream after the shuffle differs from TRL's"
    order = _expected_group_order(sizes, perm)
    assert out["ids"].tolist() == [10 * i for i in order]
    assert out["rows"].tolist() == [[2 * i, 2 * i + 1] for i in order]
    assert out["names"] == [f"s{i}" for i in order]
    assert [id(v) for v in out["vision"]] == [id(vision[i]) for i in order]
    assert out["scalar"] is batch["scalar"] and out["none"] is None


def test_shuffle_by_group_without_groups_is_trls_shuffle():
    """Interleaved groups (no run shares a dict) and batches without vision shuffle exactly as TRL does."""
    a, b = {"k": "a"}, {"k": "b"}
    batch = {"ids": torch.arange(6), "vision": [a, b, a, b, a, b]}
    torch.manual_seed(3)
    ours = vision_once.shuffle_by_group(batch)
    torch.manual_seed(3)
    theirs = trl_grpo.shuffle_sequence_dict(batch)
    assert torch.equal(ours["ids"], theirs["ids"]) and [id(v) for v in ours["vision"]] == [id(v) for v in
                                                                                           theirs["vision"]]
    torch.manual_seed(3)
    plain = vision_once.shuffle_by_group({"ids": torch.arange(6)})
    assert torch.equal(plain["ids"], theirs["ids"])
    assert not torch.equal(theirs["ids"], torch.arange(6)), "the seed gave the identity: the test is vacuous"


def _sample(images: list[int], videos: list[int] | None = None) -> dict:
    """A per-sample vision dict with one grid row per image/video; a medium of t*h*w patches has pixel rows
    filled with a label (its first value) so they can be traced."""
    s = {}
    for prefix, grid_key, sizes in (("pixel_values", "image_grid_thw", images),
                                    ("pixel_values_videos", "video_grid_thw", videos or [])):
        if sizes:
            s[grid_key] = torch.tensor([[1, 1, size] for size in sizes])
            s[prefix] = torch.cat([torch.full((size, 3), float(label)) for label, size in sizes_labels(sizes)])
    return s


def sizes_labels(sizes):
    return [(100 + 10 * i + size, size) for i, size in enumerate(sizes)]


def test_model_kwargs_keep_distinct_pixels_and_per_sequence_grids():
    """Samples A B A C B (A: 2 images, B: 1, C: a video): pixels of A, B, C once; grids per sequence; the
    expansion maps every sequence's media to the distinct media, in sequence order."""
    a, b, c = _sample([4, 2]), _sample([6]), _sample([], [8])
    samples = [a, b, a, c, b]
    uniq, inverse = vision_once.distinct(samples)
    assert [id(u) for u in uniq] == [id(a), id(b), id(c)] and inverse == [0, 1, 0, 2, 1]
    assert vision_once.expansion(uniq, inverse, "image_grid_thw") == [0, 1, 2, 0, 1, 2]
    assert vision_once.expansion(uniq, inverse, "video_grid_thw") == [0]

    extra, maps = vision_once.model_kwargs(samples, device="cpu")
    torch.testing.assert_close(extra["pixel_values"], torch.cat([a["pixel_values"], b["pixel_values"]]))
    torch.testing.assert_close(extra["pixel_values_videos"], c["pixel_values_videos"])
    torch.testing.assert_close(extra["image_grid_thw"], torch.cat([a["image_grid_thw"], b["image_grid_thw"],
                                                                   a["image_grid_thw"], b["image_grid_thw"]]))
    torch.testing.assert_close(extra["video_grid_thw"], c["video_grid_thw"])
    grid_key, grid, index = maps["get_image_features"]
    assert grid_key == "image_grid_thw" and index == [0, 1, 2, 0, 1, 2]
    torch.testing.assert_close(grid, torch.cat([a["image_grid_thw"], b["image_grid_thw"]]))
    assert maps["get_video_features"][0] == "video_grid_thw" and maps["get_video_features"][2] == [0]
    # a chunk without any video asks for no video method
    extra, maps = vision_once.model_kwargs([b, a, b], device="cpu")
    assert set(maps) == {"get_image_features"} and "pixel_values_videos" not in extra
    assert maps["get_image_features"][2] == [0, 1, 2, 0]


def test_expand_maps_pooled_and_deepstack_rows_to_every_sequence():
    """Three distinct media of 2, 3 and 1 merged tokens; sequences need media [2, 0, 0, 1]: pooled features and each
    deepstack layer (Qwen3-VL: rows of all media concatenated) follow that index, and gradients sum back."""
    pooled = [torch.full((2, 4), 1.0), torch.full((3, 4), 2.0), torch.full((1, 4), 3.0)]
    rows = torch.arange(6, dtype=torch.float32)[:, None].repeat(1, 4).requires_grad_()
    out = vision_once._expand(SimpleNamespace(pooler_output=tuple(pooled), deepstack_features=[rows, rows * 10]),
                              [2, 0, 0, 1])
    assert [float(p[0, 0]) for p in out.pooler_output] == [3.0, 1.0, 1.0, 2.0]
    assert [p.shape[0] for p in out.pooler_output] == [1, 2, 2, 3]
    assert out.deepstack_features[0][:, 0].tolist() == [5, 0, 1, 0, 1, 2, 3, 4]
    assert out.deepstack_features[1][:, 0].tolist() == [50, 0, 10, 0, 10, 20, 30, 40]
    out.deepstack_features[0].sum().backward()
    assert rows.grad[:, 0].tolist() == [2, 2, 1, 1, 1, 1]  # medium 0 used twice, the others once
    plain = vision_once._expand(SimpleNamespace(pooler_output=tuple(pooled)), [1])
    assert len(plain.pooler_output) == 1 and not hasattr(plain, "deepstack_features")


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_encode_once_features_equal_per_sequence_encoding_however_the_grid_is_passed(tiny_models, tmp_path, arch):
    """Inside encode_once, get_image_features given the sequences' pixels' distinct part returns the features of every
    sequence's images, equal to encoding each sequence's own pixels, with the grid passed by position or by name
    (transformers passes it by position today); afterwards the model's own method is back."""
    trainer = _trainer(tiny_models(arch), tmp_path)
    batch = _reorder(_grouped_batch(trainer), _interleaved(len(RECORDS)))
    samples = [v for v in batch["vision"] if "image_grid_thw" in v][:5]
    base = vision_once.base_model(trainer.model)
    per_sequence = V.collate(samples)
    with torch.no_grad():
        expected = base.get_image_features(per_sequence["pixel_values"], per_sequence["image_grid_thw"],
                                           return_dict=True)
        extra, maps = vision_once.model_kwargs(samples, device="cpu")
        assert extra["pixel_values"].shape[0] < per_sequence["pixel_values"].shape[0]
        with vision_once.encode_once(base, maps):
            by_position = base.get_image_features(extra["pixel_values"], extra["image_grid_thw"])
            by_name = base.get_image_features(extra["pixel_values"], image_grid_thw=extra["image_grid_thw"])
    assert "get_image_features" not in base.__dict__ and "get_video_features" not in base.__dict__
    for got in (by_position, by_name):
        assert len(got.pooler_output) == len(expected.pooler_output) == len(per_sequence["image_grid_thw"])
        for a, b in zip(got.pooler_output, expected.pooler_output):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        for a, b in zip(getattr(got, "deepstack_features", None) or [],
                        getattr(expected, "deepstack_features", None) or []):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (getattr(expected, "deepstack_features", None) is not None) == (arch == "qwen3_vl")
