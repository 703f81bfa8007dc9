"""Training datasets: records -> TRL rows (a conversation with decoded media, plus reward columns), lazily.

TRL's GRPOTrainer wants a `datasets.Dataset`; we give it one row per record index and decode media on access, so
nothing heavy is stored in Arrow and video parts never meet Arrow's schema merging. It must not drop records
silently: every skipped or replaced record is counted and logged.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

from .media import VisionSpec, load_image, load_video
from .prompts import PromptConfig, build_messages
from .records import (PERCEPTION_FIELDS, TASK_TYPES, DataError, Problem, anchor_paths, check_record, mix, parse_mos,
                      read_records, resolve_media, roots_per_file)

logger = logging.getLogger(__name__)

# Columns handed to reward functions (TRL passes every non-prompt column as a keyword argument).
REWARD_COLUMNS = ("solution", "type", "sample_id", "image_path", "video_path") + PERCEPTION_FIELDS


@dataclass
class DataConfig:
    files: list[str]
    weights: list[float] | None = None
    image_root: str | list[str] | None = None  # one for all files, or one per file
    video_root: str | list[str] | None = None
    on_bad_sample: str = "error"  # "error": refuse to start and list problems; "skip": drop and count
    seed: int = 42


def load_records(cfg: DataConfig) -> tuple[list[dict], list[Problem]]:
    """All files read, checked and mixed. Returns (usable records, problems found)."""
    sources, problems = [], []
    image_roots = roots_per_file(cfg.image_root, len(cfg.files), "image_root")
    video_roots = roots_per_file(cfg.video_root, len(cfg.files), "video_root")
    for path, image_root, video_root in zip(cfg.files, image_roots, video_roots):
        result = read_records(path)
        problems.extend(result.problems)
        good = []
        for rec in result.records:
            if isinstance(rec, dict):
                rec = anchor_paths(rec, image_root, video_root)
            reasons = check_record(rec)
            if reasons:
                problems.extend(Problem(path, rec.get("_index") if isinstance(rec, dict) else None, r) for r in reasons)
            else:
                good.append(rec)
        sources.append(good)
    return mix(sources, cfg.weights, cfg.seed), problems


def load_checked_records(cfg: DataConfig) -> list[dict]:
    """Records for training under the `on_bad_sample` policy: raise listing every problem, or skip and count."""
    if cfg.on_bad_sample not in ("error", "skip"):
        raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {cfg.on_bad_sample!r}")
    records, problems = load_records(cfg)
    if problems and cfg.on_bad_sample == "error":
        shown = "\n".join(str(p) for p in problems[:50])
        more = f"\n... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise DataError(f"{len(problems)} bad record(s); fix them or pass --on_bad_sample skip:\n{shown}{more}")
    if problems:
        logger.warning("skipping %d bad record(s) (--on_bad_sample skip):\n%s", len(problems),
                       "\n".join(str(p) for p in problems[:20]))
    if not records:
        raise DataError(f"no usable records in {', '.join(cfg.files)}")
    return records


class MediaLoader:
    """Decodes a record's media with a small LRU cache: TRL asks for each prompt `num_generations` times."""

    def __init__(self, spec: VisionSpec, image_root: str | None, video_root: str | None, cache_size: int = 64):
        self.spec, self.image_root, self.video_root = spec, image_root, video_root
        self._cache: OrderedDict = OrderedDict()
        self.cache_size = cache_size

    def _get(self, kind: str, path: str):
        key = (kind, path)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = load_image(path, self.spec) if kind == "image" else load_video(path, self.spec)
        self._cache[key] = value
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return value

    def parts(self, record: dict) -> list[dict]:
        """Content parts in prompt order: the reference image first (full-reference tasks), then the image/video."""
        parts = []
        ref = resolve_media(record, self.image_root, "reference")
        if ref:
            parts.append({"type": "image", "image": self._get("image", ref)})
        kind = TASK_TYPES[record["type"]][0]
        path = resolve_media(record, self.image_root if kind == "image" else self.video_root, kind)
        if kind == "image":
            parts.append({"type": "image", "image": self._get("image", path)})
        else:
            frames, meta = self._get("video", path)
            parts.append({"type": "video", "video": frames, "video_metadata": meta})
        return parts


class RowBuilder:
    """Turns record i into a TRL row; a record whose media fails to decode is replaced by the next good one."""

    def __init__(self, records: list[dict], loader: MediaLoader, prompt_cfg: PromptConfig, with_nothink: bool = False):
        self.records, self.loader, self.prompt_cfg = records, loader, prompt_cfg
        self.with_nothink = with_nothink  # the Refine trainer also needs each prompt's no-think form
        self.failures: dict[int, str] = {}

    def row(self, index: int) -> dict:
        for attempt in range(len(self.records)):
            i = (index + attempt) % len(self.records)
            if i in self.failures:
                continue
            rec = self.records[i]
            try:
                media = self.loader.parts(rec)
            except Exception as exc:  # noqa: BLE001 - any decoder error must cost one sample, not the run
                self.failures[i] = f"{type(exc).__name__}: {exc}"
                logger.warning("%s:%s: cannot decode media (%s); using another record instead (%d failed so far)",
                               rec.get("_file"), rec.get("_index"), self.failures[i], len(self.failures))
                continue
            return self._row(rec, media)
        raise DataError("no record could be decoded: " + "; ".join(f"{k}: {v}" for k, v in list(self.failures.items())[:5]))

    def _row(self, rec: dict, media: list[dict]) -> dict:
        row = {"prompt": build_messages(rec, media, self.prompt_cfg)}
        if self.with_nothink:
            row["prompt_nothink"] = build_messages(rec, media, self.prompt_cfg, think=False)
        sol = rec["solution"]
        row["solution"] = parse_mos(sol) if TASK_TYPES[rec["type"]][1] == "mos" else sol
        row["type"] = rec["type"]
        row["sample_id"] = str(rec["sample_id"])
        row["image_path"] = resolve_media(rec, self.loader.image_root, "image")
        row["video_path"] = resolve_media(rec, self.loader.video_root, "video")
        for key in PERCEPTION_FIELDS:
            row[key] = rec.get(key)
        return row


def make_train_dataset(records: list[dict], builder: RowBuilder):
    """A `datasets.Dataset` of record indices whose rows are built on access by `builder`."""
    from datasets import Dataset

    ds = Dataset.from_dict({"row": list(range(len(records)))})

    def transform(batch):
        rows = [builder.row(i) for i in batch["row"]]
        return {key: [r[key] for r in rows] for key in rows[0]}

    ds.set_transform(transform)
    return ds
