"""Video decoding keeps only the frames it samples: the same frames as decoding the whole file, at a fraction of the
host memory (a 20 s 1080p clip used to hold every frame as RGB: 5.3 GB)."""

from __future__ import annotations

import os
import subprocess
import sys

import av
import numpy as np
import pytest
import torch

from vqrl.data import media as M

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "videos")


def encode(path, frames, width, height, fps, gop, bframes):
    """A clip whose every frame differs (a moving texture and a frame counter), with the GOP and B-frames given."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "bf": str(bframes)}
        base = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
        for i in range(frames):
            img = np.roll(base, 3 * i, axis=1)
            img[:16, :16] = (7 * i) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return str(path)


def reference(path, spec):
    """The previous decoder, kept here as the definition of the frames we must return: every frame decoded to RGB,
    the sampled ones stacked and resized together."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25.0)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    idx = M.video_frame_indices(len(frames), fps, spec)
    picked = torch.from_numpy(np.stack([frames[i] for i in idx])).permute(0, 3, 1, 2).contiguous()
    per_frame = max(min(spec.video_max_pixels, spec.video_total_pixels // len(idx)), spec.video_min_pixels)
    h, w = M._resize_dims(picked.shape[2], picked.shape[3], spec.factor, spec.video_min_pixels, per_frame)
    if (h, w) != tuple(picked.shape[2:]):
        picked = torch.nn.functional.interpolate(picked.float(), size=(h, w), mode="bicubic", antialias=True)
        picked = picked.round().clamp(0, 255).to(torch.uint8)
    return picked, idx, len(frames)


@pytest.mark.parametrize("frames,width,height,fps,gop,bframes", [
    (120, 320, 240, 30, 12, 2),   # short GOPs with B-frames: a seek for every sampled frame
    (200, 320, 240, 25, 250, 3),  # one long GOP: decoded through, never seeking
    (61, 160, 96, 24, 1, 0),      # every frame a keyframe, odd count
    (90, 640, 360, 30, 30, 0),    # resized frames
])
def test_same_frames_as_decoding_the_whole_file(tmp_path, frames, width, height, fps, gop, bframes):
    path = encode(tmp_path / "clip.mp4", frames, width, height, fps, gop, bframes)
    spec = M.VisionSpec(video_max_pixels=128 * 28 * 28)
    got, meta = M.load_video(path, spec)
    want, idx, total = reference(path, spec)
    assert torch.equal(got, want)
    assert meta["frames_indices"] == idx and meta["total_num_frames"] == total == frames
    assert (meta["height"], meta["width"]) == (height, width)
    full, full_meta = M.load_video_full(path, spec)  # the fallback agrees too
    assert torch.equal(full, want) and full_meta == meta


@pytest.mark.parametrize("name", sorted(os.listdir(EXAMPLES)))
def test_shipped_videos_decode_as_before(name):
    spec = M.VisionSpec()
    got, meta = M.load_video(os.path.join(EXAMPLES, name), spec)
    want, idx, _ = reference(os.path.join(EXAMPLES, name), spec)
    assert torch.equal(got, want) and meta["frames_indices"] == idx


MEASURE = """
import resource, sys
import av
from vqrl.data import media as M
av.open(sys.argv[1]).close()  # libraries loaded before the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
frames, meta = M.load_video(sys.argv[1], M.VisionSpec())
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024, len(meta["frames_indices"]))
"""


def test_host_memory_stays_near_the_kept_frames(tmp_path):
    """300 frames of 640x360 as RGB are 207 MB; 16 kept ones 11 MB. The decoder's peak must stay within twice the kept
    frames plus a fixed allowance for the codec's own buffers (measured: ~26 MB over the kept frames at 720p)."""
    path = encode(tmp_path / "long.mp4", 300, 640, 360, 30, 250, 3)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(os.path.dirname(EXAMPLES), "..", "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", MEASURE, path], capture_output=True, text=True, env=env, check=True)
    growth, kept = map(int, out.stdout.split())
    kept_bytes = kept * 640 * 360 * 3
    assert growth < 2 * kept_bytes + 40 * 2**20, (growth / 2**20, kept_bytes / 2**20)
    assert growth < 300 * 640 * 360 * 3 / 3  # far below holding every frame


class SpyContainer:
    """A PyAV container that logs its seeks and the timestamps of the frames it decodes."""

    def __init__(self, container, log, packets=None):
        self._container, self.log, self._packets = container, log, packets

    def __enter__(self):
        self._container.__enter__()
        return self

    def __exit__(self, *exc):
        return self._container.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._container, name)

    def seek(self, offset, **kwargs):
        self.log.append(("seek", offset))
        return self._container.seek(offset, **kwargs)

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            self.log.append(frame.pts)
            yield frame

    def demux(self, *args, **kwargs):
        packets = self._container.demux(*args, **kwargs)
        return packets if self._packets is None else self._packets(packets)


def frame_timestamps(path) -> list:
    """Every frame's presentation timestamp in display order, read from the packets (no decoding)."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        return sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.size)


def spy_on_av(monkeypatch, packets=None) -> list:
    log, real = [], av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: SpyContainer(real(*a, **k), log, packets))
    return log


@pytest.mark.parametrize("gop, frames, kept", [(12, 120, 8), (1, 48, 4)])
def test_each_kept_frame_is_reached_by_seeking_to_the_keyframe_at_or_before_it(tmp_path, monkeypatch, gop, frames,
                                                                                kept):
    """Short GOPs: every kept frame is reached from the last keyframe at or before it (itself, when it is one), so
    only the frames between that keyframe and the kept one are decoded (not the whole file), and the whole-file
    fallback is never needed."""
    path = encode(tmp_path / "clip.mp4", frames, 64, 48, 30, gop, 0)
    spec = M.VisionSpec()
    want, idx, total = reference(path, spec)
    pts = frame_timestamps(path)
    log = spy_on_av(monkeypatch)
    monkeypatch.setattr(M, "load_video_full", lambda *a: pytest.fail("the whole-file fallback must not run"))
    got, meta = M.load_video(path, spec)
    assert torch.equal(got, want) and meta["frames_indices"] == idx and len(idx) == kept
    keys = [i - i % gop for i in idx]  # the keyframe at or before each kept frame
    assert len(set(keys)) == len(keys) and keys[0] == 0  # each kept frame in its own GOP
    expected = [e for i, key in zip(idx, keys) for e in [("seek", pts[key]), *pts[key:i + 1]]]
    assert log == expected
    assert sum(1 for e in log if not isinstance(e, tuple)) < total // 2


def test_in_one_long_gop_the_kept_frames_are_decoded_through_once(tmp_path, monkeypatch):
    """One GOP: a single seek to the start, then every frame up to the last kept one decoded once, in order (seeking
    back to the same keyframe for each kept frame would decode the start of the clip again and again)."""
    path = encode(tmp_path / "clip.mp4", 90, 64, 48, 30, 250, 0)
    spec = M.VisionSpec()
    want, idx, total = reference(path, spec)
    pts = frame_timestamps(path)
    log = spy_on_av(monkeypatch)
    got, meta = M.load_video(path, spec)
    assert torch.equal(got, want) and meta["frames_indices"] == idx and idx[0] == 0 and len(idx) == 6
    assert log == [("seek", pts[0]), *pts[:idx[-1] + 1]]


def test_a_video_without_trustworthy_timestamps_is_decoded_whole(tmp_path, monkeypatch):
    """Packets with repeated (or no) timestamps cannot count frames: the whole-file decode counts and picks them,
    and so does a seek that does not give back the exact frames."""
    path = encode(tmp_path / "clip.mp4", 60, 64, 48, 30, 12, 0)
    spec = M.VisionSpec()
    full, full_meta = M.load_video_full(path, spec)
    want, idx, total = reference(path, spec)
    assert torch.equal(full, want) and full_meta["frames_indices"] == idx and total == 60

    class Stamped:
        def __init__(self, packet, pts):
            self.pts, self.is_keyframe, self.size = pts, packet.is_keyframe, packet.size

    spy_on_av(monkeypatch, packets=lambda packets: [Stamped(p, 0) for p in packets])
    got, meta = M.load_video(path, spec)
    assert torch.equal(got, full) and meta == full_meta
    monkeypatch.undo()
    monkeypatch.setattr(M, "_decode_at", lambda *a: None)
    got, meta = M.load_video(path, spec)
    assert torch.equal(got, full) and meta == full_meta
