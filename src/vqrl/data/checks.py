"""Media checks shared by `vqrl validate-data`, training start and `vqrl eval`: decode every file a record names and
count its prompt's tokens, in parallel, so the three can never disagree on what a good record is.

Reports reasons per record; it never edits or drops records (the callers apply their policy) and never loads a model.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from .media import MediaError, VisionSpec, check_image, probe_video, video_frame_indices, video_tokens
from .prompts import PromptConfig, build_messages
from .records import TASK_TYPES, record_media_kind, resolve_media

# With --on_bad_sample skip, more bad records than this share of all records (or every record of one data file or
# of one media kind) says the setup is wrong (a root, a pixel budget, a prompt limit), not that a few samples are:
# training refuses to start instead of quietly training on what is left.
MAX_BAD_FRACTION = 0.5


def media_reasons(record: dict, image_root=None, video_root=None, spec: VisionSpec | None = None
                  ) -> tuple[list[str], int]:
    """Decode the record's reference (if any) and image, or open its video and decode the first frame.

    Returns (reasons, vision tokens under `spec`, 0 without a spec)."""
    reasons, tokens = [], 0
    kind = TASK_TYPES[record["type"]][0]
    paths = [("image", resolve_media(record, image_root, "reference"))] if record.get("reference") else []
    paths.append((kind, resolve_media(record, image_root if kind == "image" else video_root, kind)))
    for what, path in paths:
        try:
            if what == "image":
                tokens += check_image(path, spec)
            else:
                frames, h, w, fps = probe_video(path, decode_first=True)
                if spec is not None:
                    tokens += video_tokens(len(video_frame_indices(frames, fps, spec)), h, w, spec)
        except MediaError as exc:
            reasons.append(f"unusable {what} {path}: {exc}")
        except Exception as exc:  # noqa: BLE001 - any decoder error is a data problem to report
            reasons.append(f"unreadable {what} {path}: {type(exc).__name__}: {exc}")
    return reasons, tokens


def prompt_tokens(record: dict, processor, prompt_cfg: PromptConfig, vision_tokens: int) -> int:
    """The prompt's length as the model sees it: the chat template rendered with one placeholder per image/video
    (system turn, role markers and vision start/end included), each placeholder then counted as its vision tokens.
    Exact for images; for Qwen3-VL videos the per-frame timestamps the processor adds are not counted."""
    kind = TASK_TYPES[record["type"]][0]
    parts = ([{"type": "image"}] if record.get("reference") else []) + [{"type": kind}]
    text = processor.apply_chat_template(build_messages(record, parts, prompt_cfg), add_generation_prompt=True,
                                         tokenize=False)
    tokenizer = getattr(processor, "tokenizer", processor)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) - len(parts) + vision_tokens


def check_media(records: list[dict], spec: VisionSpec | None = None, processor=None,
                prompt_cfg: PromptConfig | None = None, max_prompt_length: int | None = None,
                image_root=None, video_root=None, progress: bool = False, desc: str = "checking media",
                workers: int | None = None) -> dict[int, list[str]]:
    """Reasons per position in `records` (only positions with a problem). Decoding runs in threads (PIL and PyAV
    release the GIL); under torch.distributed each rank checks its share and all ranks get the same answer, so they
    keep the same records."""
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    mine = list(range(rank, len(records), world))
    prompt_cfg = prompt_cfg or PromptConfig()
    if spec is None and processor is not None and max_prompt_length:
        spec = VisionSpec.for_processor(processor)  # vision tokens are part of the length

    def one(i: int) -> tuple[int, list[str]]:
        rec = records[i]
        reasons, tokens = media_reasons(rec, image_root, video_root, spec)
        if not reasons and processor is not None and max_prompt_length:
            try:
                total = prompt_tokens(rec, processor, prompt_cfg, tokens)
            except Exception as exc:  # noqa: BLE001 - one record's template failure must not stop one rank alone
                return i, [f"cannot count the prompt's tokens: {type(exc).__name__}: {exc}"]
            if total > max_prompt_length:
                reasons.append(f"prompt is ~{total} tokens with its image/video tokens, over max_prompt_length "
                               f"{max_prompt_length}: lower max_pixels / frames, or raise the limit")
        return i, reasons

    workers = workers or min(8, os.cpu_count() or 1)
    found: dict[int, list[str]] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(mine), desc=desc, unit="rec", disable=not progress, file=sys.stderr,
                 mininterval=0.1 if sys.stderr.isatty() else 30) as bar:  # a log file gets a line every 30 s
        for i, reasons in pool.map(one, mine):
            if reasons:
                found[i] = reasons
            bar.update(1)
    if distributed:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, found)
        found = {i: r for part in gathered for i, r in part.items()}
    return found


def setup_failure(records: list[dict], reasons: dict[int, list[str]], per_file: dict[str, tuple[int, int]],
                  file_problem: object = None) -> str | None:
    """Why this many bad records means a wrong setup rather than a few bad samples (None when it does not).

    records: every parsed record; reasons: their positions with a problem -> reasons; per_file: file -> (entries,
    good) where entries also counts entries that did not parse; file_problem: a file-level problem, for the message."""
    def example(positions) -> str:
        i = next((i for i in positions if i in reasons), None)
        if i is None:
            return f"; e.g. {file_problem}" if file_problem else ""
        return f"; e.g. {records[i].get('_file')}:{records[i].get('_index')}: {reasons[i][0]}"

    for kind in ("image", "video"):
        of_kind = [i for i, r in enumerate(records) if record_media_kind(r) == kind]
        if of_kind and all(i in reasons for i in of_kind):
            hint = "--image_root, --max_pixels" if kind == "image" else "--video_root, the video settings"
            return f"every {kind} record is bad ({len(of_kind)} of {len(of_kind)}: check {hint}){example(of_kind)}"
    for path, (_, good) in per_file.items():
        if good == 0:
            return f"no usable record in {path}" + example(i for i, r in enumerate(records) if r.get("_file") == path)
    total = sum(n for n, _ in per_file.values())
    n_bad = total - sum(g for _, g in per_file.values())
    if total and n_bad > MAX_BAD_FRACTION * total:
        return f"{n_bad} of {total} records are bad (more than {MAX_BAD_FRACTION:.0%}){example(sorted(reasons))}"
    return None
