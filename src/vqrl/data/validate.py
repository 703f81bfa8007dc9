"""`vqrl validate-data`: check data files record by record and report every problem as `FILE:INDEX: reason`.

Training runs the same checks before step 1 (both call vqrl.data.checks); this module only reports, it never edits
or drops data.
"""

from __future__ import annotations

import argparse
import sys

from .checks import check_media
from .media import VisionSpec
from .prompts import PromptConfig
from .records import LoadResult, Problem, check_record, read_files


def validate_files(files, image_root=None, video_root=None, decode: bool = True, processor=None,
                   max_prompt_length: int | None = None, progress: bool = False, spec: VisionSpec | None = None,
                   prompt_cfg: PromptConfig | None = None) -> list[Problem]:
    """Every problem in `files`; an empty list means the data is ready for training.

    The same checks as training runs before step 1 (vqrl.data.checks): fields and files, every file decoded, and
    with a processor and max_prompt_length each prompt's length in tokens, vision tokens included."""
    return validate_read(read_files(files, image_root, video_root), decode, processor, max_prompt_length, progress,
                         spec, prompt_cfg)


def validate_read(results: list[LoadResult], decode: bool = True, processor=None, max_prompt_length: int | None = None,
                  progress: bool = False, spec: VisionSpec | None = None,
                  prompt_cfg: PromptConfig | None = None) -> list[Problem]:
    """validate_files on files already read (records.read_files)."""
    problems: list[Problem] = []
    if spec is None and processor is not None:
        spec = VisionSpec.for_processor(processor)
    for result in results:
        path = result.file
        problems.extend(result.problems)
        reasons = {k: check_record(rec) for k, rec in enumerate(result.records)}
        if decode:
            todo = [k for k, r in reasons.items() if not r]
            found = check_media([result.records[k] for k in todo], spec, processor, prompt_cfg, max_prompt_length,
                                progress=progress, desc=f"checking {path}")
            reasons.update({todo[k]: r for k, r in found.items()})
        for k, rec in enumerate(result.records):
            problems.extend(Problem(path, rec["_index"], r) for r in reasons[k])
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
    parser.add_argument("--max_pixels", type=int, default=None,
                        help="image pixel budget, as in training (with --model)")
    parser.add_argument("--video_fps", type=float, default=2.0, help="as in training (with --model)")
    parser.add_argument("--video_max_frames", type=int, default=16, help="as in training (with --model); at least 2")
    parser.add_argument("--no_think", action="store_true", help="count the no-think prompt (as --think false)")


def run(args: argparse.Namespace) -> int:
    processor = spec = None
    try:  # settings a training run would refuse are refused here too, before anything is read
        VisionSpec(max_pixels=args.max_pixels or VisionSpec.max_pixels, video_fps=args.video_fps,
                   video_max_frames=args.video_max_frames)
        if args.max_prompt_length is not None and not args.model:
            raise ValueError("--max_prompt_length needs --model (its tokenizer and pixel rules count the tokens)")
    except ValueError as exc:
        print(f"vqrl validate-data: {exc}", file=sys.stderr)
        return 2
    if args.model:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(args.model)
        spec = VisionSpec.for_processor(processor, max_pixels=args.max_pixels, video_fps=args.video_fps,
                                        video_max_frames=args.video_max_frames)
    results = read_files(args.files, args.image_root, args.video_root)
    problems = validate_read(results, decode=not args.no_decode, processor=processor,
                             max_prompt_length=args.max_prompt_length, progress=sys.stderr.isatty(), spec=spec,
                             prompt_cfg=PromptConfig(think=not args.no_think))
    for p in problems:
        print(p)
    total = sum(len(r.records) for r in results)
    print(f"{len(problems)} problem(s) in {total} record(s) from {len(args.files)} file(s)", file=sys.stderr)
    return 1 if problems else 0
