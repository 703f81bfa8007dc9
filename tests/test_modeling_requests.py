"""vLLM requests built from a prompt's media, exactly: which form each medium takes, where video metadata goes,
which tokens are collapsed, and the refusals (vqrl.modeling.vllm_requests; plain data, no vLLM needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqrl.modeling.vllm_requests import check_expansion, collapse_placeholders, media_request, vllm_multi_modal_data

IMG, VID = 5, 6


def _video(t=2, value=7):
    video = torch.zeros(t, 3, 2, 4)  # (T, C, H, W) as the loader gives frames
    video[:, 0] = value
    return video


def test_a_prompt_without_media_is_sent_as_is():
    ids = [1, IMG, IMG, 2]
    row = media_request(ids, [], [], [], {IMG, VID})
    assert row == {"prompt_token_ids": [1, IMG, IMG, 2]} and row["prompt_token_ids"] is not ids


def test_one_image_is_sent_bare_and_several_as_a_list():
    assert media_request([1, IMG, IMG, IMG, 2], ["pil"], [], [], {IMG, VID}) == {
        "prompt_token_ids": [1, IMG, 2], "multi_modal_data": {"image": "pil"}}
    assert vllm_multi_modal_data(["a", "b"], [], []) == {"image": ["a", "b"]}
    assert vllm_multi_modal_data([], [], []) is None


def test_a_video_goes_as_host_uint8_frames_with_its_metadata():
    meta = {"fps": 2.0}
    row = media_request([1, VID, VID, 2], [], [_video()], [meta], {IMG, VID})
    assert row["prompt_token_ids"] == [1, VID, 2] and "mm_processor_kwargs" not in row
    array, sent_meta = row["multi_modal_data"]["video"]
    assert sent_meta is meta and array.dtype == np.uint8 and array.shape == (2, 2, 4, 3)
    assert array[..., 0].tolist() == [[[7] * 4] * 2] * 2 and int(array[..., 1:].max()) == 0
    bare = vllm_multi_modal_data([], [_video(), _video(value=9)], [None, meta])["video"]
    assert isinstance(bare[0], np.ndarray) and bare[1][1] is meta and int(bare[1][0][0, 0, 0, 0]) == 9


def test_for_a_vllm_that_drops_metadata_it_goes_as_the_processors_argument():
    meta = {"fps": 2.0}
    row = media_request([VID, VID], [], [_video()], [meta], {VID}, metadata_in_kwargs=True)
    assert isinstance(row["multi_modal_data"]["video"], np.ndarray)
    assert row["mm_processor_kwargs"] == {"video_metadata": [meta]}
    assert "mm_processor_kwargs" not in media_request([VID], [], [_video()], [None], {VID}, metadata_in_kwargs=True)
    with pytest.raises(ValueError, match=r"^a prompt with 2 videos: this vLLM drops video metadata \(fps\)"):
        media_request([VID], [], [_video(), _video()], [meta, meta], {VID}, metadata_in_kwargs=True)


def test_only_runs_of_one_placeholder_collapse():
    assert collapse_placeholders([IMG, IMG, 1, 1, IMG, VID, VID, IMG, IMG, 2], {IMG, VID}) == [IMG, 1, 1, IMG, VID,
                                                                                             IMG, 2]
    assert collapse_placeholders([], {IMG}) == []


def test_an_expansion_other_than_the_processors_is_refused():
    check_expansion([1, 2, 3], (1, 2, 3), 0)
    with pytest.raises(RuntimeError, match=r"^vLLM expanded prompt 4 to 2 tokens where the processor gave 3: "):
        check_expansion([1, 2, 3], [1, 2], 4)
    with pytest.raises(RuntimeError, match="prompt 0 to 3 tokens where the processor gave 3"):
        check_expansion([1, 2, 3], [1, 2, 4], 0)
