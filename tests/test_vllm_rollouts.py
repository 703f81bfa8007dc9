"""vLLM request building without vLLM: media conversion and the per-modality log-prob gap (the vLLM end-to-end tests
are in test_vllm.py, run by `make test-vllm`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqrl.modeling.vllm_requests import vllm_multi_modal_data
from vqrl.trainers.vllm_rollouts import logp_gap_metrics, server_images, warn_on_logp_gap


class OnAccelerator(torch.Tensor):
    """Behaves like a tensor in GPU memory where it matters here: numpy() refuses it until it is copied to the host,
    with torch's own message for CUDA tensors. accelerate's data loader puts batch tensors (video frames too) there."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.numpy:
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                            "to host memory first.")
        out = super().__torch_function__(func, types, args, kwargs or {})
        to_host = func is torch.Tensor.cpu or (func is torch.Tensor.to and "cpu" in map(str, [*args[1:],
                                                                                              *(kwargs or {}).values()]))
        return out.as_subclass(torch.Tensor) if to_host and isinstance(out, torch.Tensor) else out


def test_video_frames_in_accelerator_memory_reach_vllm_as_host_uint8_arrays():
    """The H200 crash "can't convert cuda:0 device type tensor to numpy" (micro-batch 16 x 4 accumulation, a video
    in the generation batch): frames must be copied to the host before numpy."""
    frames = torch.randint(0, 256, (4, 3, 6, 8), dtype=torch.uint8)
    on_device = frames.clone().as_subclass(OnAccelerator)
    with pytest.raises(TypeError, match="cuda:0"):
        on_device.numpy()  # the stand-in behaves as a CUDA tensor does
    meta = {"fps": 2.0, "frames_indices": [0, 1, 2, 3]}
    data = vllm_multi_modal_data(["img"], [on_device], [meta])
    array, got_meta = data["video"]
    assert type(array) is np.ndarray and array.dtype == np.uint8 and array.shape == (4, 6, 8, 3)
    assert np.array_equal(array, frames.permute(0, 2, 3, 1).numpy()) and got_meta is meta
    assert data["image"] == "img"


def test_several_images_and_videos_keep_their_order():
    a, b = torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.ones(2, 3, 4, 4, dtype=torch.uint8)
    data = vllm_multi_modal_data(["i1", "i2"], [a, b], [None, None])
    assert data["image"] == ["i1", "i2"]
    assert [int(v.max()) for v in data["video"]] == [0, 1]
    assert vllm_multi_modal_data([], [], []) is None


def test_server_mode_refuses_video_and_passes_images_per_prompt():
    assert server_images([(["a"], [], []), ([], [], [])]) == [["a"], None]
    assert server_images([([], [], [])]) is None
    with pytest.raises(ValueError, match="colocate"):
        server_images([(["a"], [], []), ([], [torch.zeros(1)], [None])])


class OneProcess:
    def pad_across_processes(self, t, dim, pad_index):
        return t

    def gather(self, t):
        return t


def test_logp_gap_is_measured_per_modality_over_completion_tokens_only():
    trained = torch.zeros(3, 4)
    sampled = torch.tensor([[0.1, 0.1, 0.1, 9.0], [0.5, 0.5, 0.5, 0.5], [2.0, 2.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    vision = [{"pixel_values": 1}, {"pixel_values": 1}, {"pixel_values_videos": 1}]
    m = logp_gap_metrics({"sampling_per_token_logps": sampled, "old_per_token_logps": trained,
                          "completion_mask": mask}, vision, OneProcess())
    assert m["vllm/logp_gap_mean_image"] == pytest.approx((0.3 + 2.0) / 7)
    assert m["vllm/logp_gap_mean_video"] == pytest.approx(2.0)
    assert m["vllm/logp_gap_p99_image"] == pytest.approx(0.5)  # the masked 9.0s never count
    assert m["vllm/logp_gap_mean"] == pytest.approx((0.3 + 2.0 + 4.0) / 9)
    assert logp_gap_metrics({"completion_mask": mask}, vision, OneProcess()) == {}


def test_each_run_of_placeholders_is_cut_to_one_token_for_vllm():
    """vLLM expands each image/video placeholder itself; an already expanded run is not recognised (vLLM expanded
    its first token again), so each run must reach it as one token."""
    from vqrl.modeling.vllm_requests import check_expansion, collapse_placeholders, media_request

    IMG, VID = 7, 8
    ids = [1, 2, 5, IMG, IMG, IMG, 6, 3, 5, VID, VID, 6, 5, IMG, IMG, 6, 4]
    assert collapse_placeholders(ids, {IMG, VID}) == [1, 2, 5, IMG, 6, 3, 5, VID, 6, 5, IMG, 6, 4]
    frames = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    row = media_request(ids, ["a", "b"], [frames], [None], {IMG, VID})
    assert row["prompt_token_ids"].count(IMG) == 2 and row["prompt_token_ids"].count(VID) == 1
    assert media_request(ids, [], [], [], {IMG, VID}) == {"prompt_token_ids": ids}  # no media: sent as is
    check_expansion(ids, list(ids), 0)
    with pytest.raises(RuntimeError, match="expanded prompt 3 to 20 tokens where the processor gave 17"):
        check_expansion(ids, ids[:3] + [IMG] * 3 + ids[3:], 3)


def test_a_large_logp_gap_is_reported_once_per_prompt_kind(caplog):
    """A video gap like the H200's (0.20 nats; bf16 noise is ~0.03) says so once, naming the kind; noise stays quiet."""
    warned: set[str] = set()
    quiet = {"vllm/logp_gap_mean": 0.03, "vllm/logp_gap_mean_image": 0.03, "vllm/logp_gap_mean_video": 0.04}
    loud = {"vllm/logp_gap_mean": 0.12, "vllm/logp_gap_mean_image": 0.03, "vllm/logp_gap_mean_video": 0.20}
    with caplog.at_level("WARNING", logger="vqrl"):
        warn_on_logp_gap(quiet, warned)
        assert not caplog.records
        for _ in range(3):
            warn_on_logp_gap(loud, warned)
    assert len(caplog.records) == 1 and "video prompts" in caplog.text and "0.20 nats" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="vqrl"):
        warn_on_logp_gap({"vllm/logp_gap_mean": 1.07}, set())  # text-only batches: the overall mean is theirs
    assert len(caplog.records) == 1 and "text-only prompts" in caplog.text


def test_colocated_requests_carry_their_media_with_one_placeholder_per_image():
    """The stand-in for TRL's vllm.LLM sends each prompt with its media and its run of image placeholders cut to
    one (vLLM expands it again), and refuses an expansion other than the trainer's prompt."""
    from types import SimpleNamespace

    from vqrl.trainers.vllm_rollouts import MediaLLM

    image_pad = 7
    sent = [1, 2, image_pad, image_pad, image_pad, 3]

    class Engine:
        def __init__(self, expanded):
            self.expanded, self.rows = expanded, None

        def generate(self, rows, *args, **kwargs):
            self.rows = rows
            return [SimpleNamespace(prompt_token_ids=self.expanded)]

    trainer = SimpleNamespace(_pending_media=[(["img"], [], [])], _image_token_id=image_pad, _video_token_id=None)
    engine = Engine(sent)
    MediaLLM(engine, trainer).generate([{"prompt_token_ids": sent}])
    assert engine.rows == [{"prompt_token_ids": [1, 2, image_pad, 3], "multi_modal_data": {"image": "img"}}]
    with pytest.raises(RuntimeError, match="vLLM expanded prompt 0 to 5 tokens where the processor gave 6"):
        MediaLLM(Engine(sent[1:]), trainer).generate([{"prompt_token_ids": sent}])


def test_vllms_context_holds_the_prompt_and_the_completion():
    """TRL sizes vLLM's context by the completion alone (as the seed did); vqrl makes room for the prompt too, keeps
    a length the user set, and refuses one that leaves no room for any prompt."""
    from types import SimpleNamespace

    from vqrl.trainers.vllm_rollouts import size_context

    def config(model_len, prompt, completion=256):
        return SimpleNamespace(vllm_max_model_length=model_len, max_prompt_length=prompt,
                               max_completion_length=completion)

    sized = config(None, 512)
    size_context(sized)
    assert sized.vllm_max_model_length == 768
    kept = config(4096, 512)
    size_context(kept)
    assert kept.vllm_max_model_length == 4096
    unbounded = config(None, None)  # no prompt limit: vLLM's own default (the model's) stands
    size_context(unbounded)
    assert unbounded.vllm_max_model_length is None
    size_context(config(257, 512))  # one token of prompt fits
    with pytest.raises(ValueError, match="vllm_max_model_length 256 leaves no room for the prompt: it must exceed "
                                         "max_completion_length 256"):
        size_context(config(256, 512))


def test_colocated_generation_is_routed_through_the_media_wrapper_and_server_mode_is_not():
    from types import SimpleNamespace

    from vqrl.trainers.vllm_rollouts import MediaLLM, attach

    engine = SimpleNamespace(llm_engine="the engine", generate=None)
    colocated = SimpleNamespace(vllm_mode="colocate", vllm_generation=SimpleNamespace(llm=engine))
    attach(colocated)
    wrapped = colocated.vllm_generation.llm
    assert isinstance(wrapped, MediaLLM) and wrapped._llm is engine
    assert wrapped.llm_engine == "the engine"  # everything else TRL reads is the engine's own
    server = SimpleNamespace(vllm_mode="server", vllm_generation=SimpleNamespace(llm=engine))
    attach(server)
    assert server.vllm_generation.llm is engine
