"""Training datasets: records -> TRL rows (a conversation with decoded media, plus reward columns), lazily.

TRL's GRPOTrainer wants a `datasets.Dataset`; we give it one row per record index and decode media on access, so
nothing heavy is stored in Arrow and video parts never meet Arrow's schema merging. It must not drop records
silently: every skipped or replaced record is counted and logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .checks import MAX_BAD_FRACTION, check_media, setup_failure
from .media import VisionSpec, load_image, load_video
from .prompts import PromptConfig, build_messages
from .records import (PERCEPTION_FIELDS, TASK_TYPES, DataError, Problem, check_record, mix, read_files, resolve_media,
                      to_float)

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    files: list[str]
    weights: list[float] | None = None
    image_root: str | list[str] | None = None  # one for all files, or one per file
    video_root: str | list[str] | None = None
    on_bad_sample: str = "error"  # "error": refuse to start and list problems; "skip": drop and count
    seed: int = 42
    decode: bool = True  # decode every image / open every video before step 1 (False: only check files exist)


def load_records(cfg: DataConfig, spec: VisionSpec | None = None, processor=None,
                 prompt_cfg: PromptConfig | None = None, max_prompt_length: int | None = None, progress: bool = False
                 ) -> tuple[list[dict], list[Problem], str | None]:
    """All files read, checked (fields, files, and with cfg.decode every file decoded and, with a processor and
    max_prompt_length, each prompt's length in tokens, vision tokens included) and mixed.

    Returns (usable records, problems found, why the problems look like a wrong setup or None)."""
    parsed, owner, reasons, problems = [], [], {}, []
    entries = []  # per file: parsed records + entries that did not parse
    for k, result in enumerate(read_files(cfg.files, cfg.image_root, cfg.video_root)):
        problems.extend(result.problems)
        entries.append(result.entries)
        for rec in result.records:
            found = check_record(rec)
            if found:
                reasons[len(parsed)] = found
            parsed.append(rec)
            owner.append(k)
    if cfg.decode:
        start = time.monotonic()
        todo = [i for i in range(len(parsed)) if i not in reasons]
        logger.info("decoding the media of %d record(s) before step 1 (the checks of vqrl validate-data)", len(todo))
        found = check_media([parsed[i] for i in todo], spec, processor, prompt_cfg, max_prompt_length,
                            progress=progress, desc="decoding media")
        reasons.update({todo[k]: r for k, r in found.items()})
        logger.info("decoded the media of %d record(s) in %.1f s: %d bad", len(todo), time.monotonic() - start,
                    len(found))
    good: list[list[dict]] = [[] for _ in cfg.files]
    for i, rec in enumerate(parsed):
        if i in reasons:
            problems.extend(Problem(rec["_file"], rec["_index"], r) for r in reasons[i])
        else:
            good[owner[i]].append(rec)
    order = {path: k for k, path in reversed(list(enumerate(cfg.files)))}
    problems.sort(key=lambda p: (order.get(p.file, 0), -1 if p.index is None else p.index))
    per_file = {f"{path}" + (f" (data file {k + 1})" if cfg.files.count(path) > 1 else ""): (entries[k], len(good[k]))
                for k, path in enumerate(cfg.files)}
    setup = setup_failure(parsed, reasons, per_file, next((p for p in problems if p.index is None), None))
    return mix(good, cfg.weights, cfg.seed), problems, setup


def load_checked_records(cfg: DataConfig, spec: VisionSpec | None = None, processor=None,
                         prompt_cfg: PromptConfig | None = None, max_prompt_length: int | None = None,
                         progress: bool = False) -> list[dict]:
    """Records for training under the `on_bad_sample` policy: raise listing every problem, or skip and count.

    Even under skip, a share of bad records that says the setup is wrong (see checks.setup_failure) raises."""
    if cfg.on_bad_sample not in ("error", "skip"):
        raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {cfg.on_bad_sample!r}")
    records, problems, setup = load_records(cfg, spec, processor, prompt_cfg, max_prompt_length, progress)
    if problems and cfg.on_bad_sample == "error":
        shown = "\n".join(str(p) for p in problems[:50])
        more = f"\n... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise DataError(f"{len(problems)} bad record(s); fix them or pass --on_bad_sample skip:\n{shown}{more}")
    if setup:
        raise DataError(f"the data setup looks wrong, not a few bad samples: {setup}. --on_bad_sample skip drops "
                        f"isolated bad records only (at most {MAX_BAD_FRACTION:.0%}, and not all of one file or "
                        "media kind); `vqrl validate-data` lists every problem")
    if problems:
        logger.warning("skipping %d bad record(s) (--on_bad_sample skip):\n%s", len(problems),
                       "\n".join(str(p) for p in problems[:20]))
    if not records:
        raise DataError(f"no usable records in {', '.join(cfg.files)}")
    return records


class MediaLoader:
    """Decodes a record's media with a small LRU cache (TRL asks for each prompt `num_generations` times), and can
    decode the media of records coming next in background threads (`prefetch`), so a step does not wait for them.

    A prefetched decode that failed raises when the record is asked for, exactly as a decode on the spot would: the
    RowBuilder counts and replaces it the same way."""

    def __init__(self, spec: VisionSpec, image_root: str | None, video_root: str | None, cache_size: int = 64,
                 workers: int = 0):
        self.spec, self.image_root, self.video_root = spec, image_root, video_root
        self._cache: OrderedDict = OrderedDict()
        self.cache_size = cache_size
        self.workers = workers
        self._pending: dict = {}
        self._lock = threading.Lock()
        self._pool = None

    def _decode(self, kind: str, path: str):
        return load_image(path, self.spec) if kind == "image" else load_video(path, self.spec)

    def _get(self, kind: str, path: str):
        key = (kind, path)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            future = self._pending.pop(key, None)
        value = future.result() if future is not None else self._decode(kind, path)
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return value

    def media_of(self, record: dict) -> list[tuple[str, str]]:
        """(kind, path) of each medium of a record, in prompt order."""
        out = []
        ref = resolve_media(record, self.image_root, "reference")
        if ref:
            out.append(("image", ref))
        kind = TASK_TYPES[record["type"]][0]
        out.append((kind, resolve_media(record, self.image_root if kind == "image" else self.video_root, kind)))
        return out

    def prefetch(self, records: list[dict]) -> None:
        """Start decoding these records' media in the background (no-op without workers or when already there)."""
        if self.workers <= 0:
            return
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="vqrl-media")
            for record in records:
                for key in self.media_of(record):
                    if key not in self._cache and key not in self._pending:
                        self._pending[key] = self._pool.submit(self._decode, *key)

    def parts(self, record: dict) -> list[dict]:
        """Content parts in prompt order: the reference image first (full-reference tasks), then the image/video."""
        parts = []
        for kind, path in self.media_of(record):
            if kind == "image":
                parts.append({"type": "image", "image": self._get("image", path)})
            else:
                frames, meta = self._get("video", path)
                parts.append({"type": "video", "video": frames, "video_metadata": meta})
        return parts


# Columns a trainer may ask for beyond the prompt and the reward columns (its `extra_columns`): name -> how to build it
# from (record, decoded media parts, prompt settings).
EXTRA_COLUMNS = {
    "prompt_nothink": lambda rec, media, cfg: build_messages(rec, media, cfg, think=False),  # Refine's PD baseline
}


class RowBuilder:
    """Turns record i into a TRL row; a record whose media fails to decode is replaced by the next good one."""

    def __init__(self, records: list[dict], loader: MediaLoader, prompt_cfg: PromptConfig,
                 extra_columns: tuple[str, ...] = (), with_nothink: bool = False):
        self.records, self.loader, self.prompt_cfg = records, loader, prompt_cfg
        extra = tuple(extra_columns) + (("prompt_nothink",) if with_nothink else ())  # with_nothink: older name
        unknown = [name for name in extra if name not in EXTRA_COLUMNS]
        if unknown:
            raise ValueError(f"unknown extra dataset column {unknown[0]!r}; known: {', '.join(EXTRA_COLUMNS)} "
                             "(data.dataset.EXTRA_COLUMNS)")
        self.extra_columns = tuple(dict.fromkeys(extra))
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
                if len(self.failures) > MAX_BAD_FRACTION * len(self.records):
                    raise DataError(f"{len(self.failures)} of {len(self.records)} records failed to decode during "
                                    f"training (more than {MAX_BAD_FRACTION:.0%}; they all decoded at start): the "
                                    f"media became unreadable, e.g. {rec.get('_file')}:{rec.get('_index')}: "
                                    f"{self.failures[i]}") from exc
                continue
            return self._row(rec, media)
        raise DataError("no record could be decoded: " + "; ".join(f"{k}: {v}" for k, v in list(self.failures.items())[:5]))

    def prefetch(self, indices) -> None:
        """Decode the media of these records ahead (records already known to fail are skipped)."""
        wanted = dict.fromkeys(i % len(self.records) for i in indices)
        self.loader.prefetch([self.records[i] for i in wanted if i not in self.failures])

    def _row(self, rec: dict, media: list[dict]) -> dict:
        row = {"prompt": build_messages(rec, media, self.prompt_cfg)}
        for name in self.extra_columns:
            row[name] = EXTRA_COLUMNS[name](rec, media, self.prompt_cfg)
        sol = rec["solution"]
        row["solution"] = to_float(sol) if TASK_TYPES[rec["type"]][1] == "mos" else sol
        row["type"] = rec["type"]
        row["sample_id"] = str(rec["sample_id"])
        row["image_path"] = resolve_media(rec, self.loader.image_root, "image")
        row["video_path"] = resolve_media(rec, self.loader.video_root, "video")
        for key in PERCEPTION_FIELDS:
            row[key] = rec.get(key)
        return row


def lazy_dataset(length: int, row_fn):
    """A `datasets.Dataset` of `length` indices whose rows `row_fn(i)` builds on access: nothing heavy is stored in
    Arrow (TRL wants a Dataset; decoded media and conversations with media never meet Arrow's schema merging)."""
    from datasets import Dataset

    ds = Dataset.from_dict({"row": list(range(length))})

    def transform(batch):
        rows = [row_fn(i) for i in batch["row"]]
        return {key: [r[key] for r in rows] for key in rows[0]}

    ds.set_transform(transform)
    return ds


def make_train_dataset(records: list[dict], builder: RowBuilder):
    """A `datasets.Dataset` of record indices whose rows are built on access by `builder`."""
    return lazy_dataset(len(records), builder.row)
