"""`vqrl validate-data`: check data files record by record and report every problem as `FILE:INDEX: reason`.

Training runs the same checks before step 1; this module only reports, it never edits or drops data.
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from .media import VisionSpec, probe_video, video_frame_indices, video_tokens
from .records import TASK_TYPES, Problem, check_record, read_records, resolve_media, roots_per_file


def _open_media(record: dict, image_root, video_root, spec: VisionSpec | None) -> tuple[list[str], int]:
    """Open the record's files (header + a decode for images); return (reasons, vision tokens or 0)."""
    from PIL import Image

    reasons, tokens = [], 0
    kind = TASK_TYPES[record["type"]][0]
    paths = [("image", resolve_media(record, image_root, "reference"))] if record.get("reference") else []
    paths.append((kind, resolve_media(record, image_root if kind == "image" else video_root, kind)))
    for what, path in paths:
        try:
            if what == "image":
                with Image.open(path) as img:
                    img.load()
                    if spec:
                        tokens += spec.image_tokens(img.height, img.width)
            else:
                frames, h, w, fps = probe_video(path)
                if frames <= 0 or h <= 0:
                    raise ValueError("no video frames")
                if spec:
                    tokens += video_tokens(len(video_frame_indices(frames, fps, spec)), h, w, spec)
        except Exception as exc:  # noqa: BLE001 - any decoder error is a data problem to report
            reasons.append(f"unreadable {what} {path}: {type(exc).__name__}: {exc}")
    return reasons, tokens


def validate_files(files, image_root=None, video_root=None, decode: bool = True, processor=None,
                   max_prompt_length: int | None = None, progress: bool = False) -> list[Problem]:
    """Every problem in `files`; an empty list means the data is ready for training."""
    problems: list[Problem] = []
    spec = VisionSpec.for_processor(processor) if processor is not None else None
    image_roots = roots_per_file(image_root, len(files), "image_root")
    video_roots = roots_per_file(video_root, len(files), "video_root")
    for path, image_root, video_root in zip(files, image_roots, video_roots):
        result = read_records(path)
        problems.extend(result.problems)
        for rec in tqdm(result.records, desc=f"checking {path}", disable=not progress, unit="rec"):
            index = rec.get("_index") if isinstance(rec, dict) else None
            reasons = check_record(rec, image_root, video_root)
            if not reasons and decode:
                reasons, tokens = _open_media(rec, image_root, video_root, spec)
                if not reasons and processor is not None and max_prompt_length:
                    from .prompts import PromptConfig, prompt_text

                    text_tokens = len(processor.tokenizer(prompt_text(rec, PromptConfig()))["input_ids"])
                    total = text_tokens + tokens + 32  # + chat-template framing
                    if total > max_prompt_length:
                        reasons.append(f"prompt is ~{total} tokens with its image/video tokens, over "
                                       f"max_prompt_length {max_prompt_length}: lower max_pixels / frames")
            problems.extend(Problem(path, index, r) for r in reasons)
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", help="JSON list or JSONL data files")
    parser.add_argument("--image_root", nargs="+", default=None,
                        help="folder that relative image paths start from (one, or one per file)")
    parser.add_argument("--video_root", nargs="+", default=None,
                        help="folder that relative video paths start from (one, or one per file)")
    parser.add_argument("--no_decode", action="store_true", help="only check that files exist (faster)")
    parser.add_argument("--model", default=None, help="model/processor path: also check prompt length in tokens")
    parser.add_argument("--max_prompt_length", type=int, default=None, help="token limit for prompt + vision tokens")


def run(args: argparse.Namespace) -> int:
    processor = None
    if args.model:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(args.model)
    problems = validate_files(args.files, args.image_root, args.video_root, decode=not args.no_decode,
                              processor=processor, max_prompt_length=args.max_prompt_length, progress=sys.stderr.isatty())
    for p in problems:
        print(p)
    total = sum(len(read_records(f).records) for f in args.files)
    print(f"{len(problems)} problem(s) in {total} record(s) from {len(args.files)} file(s)", file=sys.stderr)
    return 1 if problems else 0
