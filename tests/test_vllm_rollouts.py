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
        llm_engine = SimpleNamespace(model_config=SimpleNamespace(hf_config=SimpleNamespace(model_type="qwen2_vl")))

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


def _vllm_0_26_processor_call(processor, text: str, request: dict):
    """What vLLM <= 0.26 hands Qwen2.5-VL's HF processor for a request: the videos with their metadata dropped (its
    data parser keeps bare arrays), plus the request's own `mm_processor_kwargs` (read from vLLM 0.26's
    multimodal/parse.py and processing/context.py)."""
    video = request["multi_modal_data"]["video"]
    array = video[0] if isinstance(video, tuple) else video
    return processor(text=[text], videos=[torch.from_numpy(array).permute(0, 3, 1, 2)], return_tensors="pt",
                     **request.get("mm_processor_kwargs", {}))


def test_video_timing_survives_a_vllm_that_drops_video_metadata(tiny_model_dir):
    """The H200's video log-prob gap (0.20 nats vs 0.03 on images): vLLM 0.26 drops a video's metadata before
    Qwen2.5-VL's processor, which then assumes 24 fps (second_per_grid_ts 0.083, not the trainer's 1.0) and samples
    under other temporal positions. With `metadata_in_kwargs` the metadata reaches the processor as its own
    argument and the timing vLLM sees is the trainer's; without it, it is not (the bug)."""
    from transformers import AutoProcessor

    from vqrl.modeling.vision import encode_prompt, media_of
    from vqrl.modeling.vllm_requests import media_request

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    frames = torch.randint(0, 256, (8, 3, 56, 56), dtype=torch.uint8)
    meta = {"fps": 25.0, "total_num_frames": 100, "frames_indices": list(range(0, 96, 12)), "duration": 4.0,
            "height": 56, "width": 56}  # 2 frames kept per second, as the data loader samples them
    prompt = [{"role": "user", "content": [{"type": "video", "video": frames, "video_metadata": meta},
                                           {"type": "text", "text": "Rate this video."}]}]
    ids, vision = encode_prompt(processor, prompt)
    assert vision["second_per_grid_ts"].tolist() == [1.0]
    text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    video_pad = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")

    fixed = media_request(ids, *media_of(prompt), {video_pad}, metadata_in_kwargs=True)
    assert fixed["mm_processor_kwargs"] == {"video_metadata": [meta]}
    seen = _vllm_0_26_processor_call(processor, text, fixed)
    assert seen["second_per_grid_ts"].tolist() == vision["second_per_grid_ts"].tolist()
    assert torch.equal(seen["pixel_values_videos"], vision["pixel_values_videos"])

    with pytest.raises(ValueError, match="a prompt with 2 videos: this vLLM drops video metadata"):
        media_request(ids, [], [frames, frames], [meta, meta], {video_pad}, metadata_in_kwargs=True)

    as_pairs = media_request(ids, *media_of(prompt), {video_pad})  # a vLLM that forwards (array, metadata) pairs
    assert isinstance(as_pairs["multi_modal_data"]["video"], tuple) and "mm_processor_kwargs" not in as_pairs
    assert _vllm_0_26_processor_call(processor, text, as_pairs)["second_per_grid_ts"].tolist() != [1.0]


def test_which_vllm_drops_video_metadata_is_read_from_vllm_itself(monkeypatch):
    """Only Qwen2.5-VL's positions depend on the video's fps; for it, a vLLM whose Qwen2.5-VL processing class has
    no data parser of its own (vLLM 0.26) drops the metadata, one with it (vLLM 0.32) forwards it, and a vLLM
    without the class is an error naming its version."""
    import sys
    import types

    from vqrl.modeling.vllm_compat import drops_video_metadata

    def fake_vllm(info_class):
        module = types.ModuleType("vllm.model_executor.models.qwen2_5_vl")
        if info_class is not None:
            module.Qwen2_5_VLProcessingInfo = info_class
        monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__="0.0.test"))
        monkeypatch.setitem(sys.modules, "vllm.model_executor.models.qwen2_5_vl", module)

    class Qwen2VLInfo:
        def get_data_parser(self):
            return "metadata dropped"

    fake_vllm(type("Qwen2_5_VLProcessingInfo", (Qwen2VLInfo,), {}))  # inherits Qwen2-VL's parser: vLLM 0.26
    assert drops_video_metadata("qwen2_5_vl") is True
    assert drops_video_metadata("qwen2_vl") is False and drops_video_metadata("qwen3_vl") is False
    fake_vllm(type("Qwen2_5_VLProcessingInfo", (Qwen2VLInfo,), {"get_data_parser": lambda self: "needs metadata"}))
    assert drops_video_metadata("qwen2_5_vl") is False
    fake_vllm(None)
    with pytest.raises(RuntimeError, match="vLLM 0.0.test has no Qwen2_5_VLProcessingInfo"):
        drops_video_metadata("qwen2_5_vl")


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

    llm_engine = SimpleNamespace(model_config=SimpleNamespace(hf_config=SimpleNamespace(model_type="qwen2_vl")))
    engine = SimpleNamespace(llm_engine=llm_engine, generate=None)
    colocated = SimpleNamespace(vllm_mode="colocate", vllm_generation=SimpleNamespace(llm=engine))
    attach(colocated)
    wrapped = colocated.vllm_generation.llm
    assert isinstance(wrapped, MediaLLM) and wrapped._llm is engine
    assert wrapped.llm_engine is llm_engine  # everything else TRL reads is the engine's own
    server = SimpleNamespace(vllm_mode="server", vllm_generation=SimpleNamespace(llm=engine))
    attach(server)
    assert server.vllm_generation.llm is engine
