"""The learning check's task: procedural scenes, distorted in both directions, split by source into train /
held-out / test scoring files, with the trivial baselines fitted on train and scored on the other splits.

Deterministic under `seed`; must not read the held-out or test labels for anything but scoring them.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..datagen.perception import make_perception_data
from ..datagen.scenes import write_scenes
from . import baselines

SPLITS = ("train", "heldout", "test")
# Scene indices of each split start here: a scene belongs to exactly one split, whatever the split sizes.
FIRST_INDEX = {"train": 0, "heldout": 100_000, "test": 200_000}
# Two pairs of opposite directions: darker and brighter (mean luminance), softer and grainier (sharpness), so that
# no image statistic ranks quality in one direction, and no single statistic covers both pairs. JPEG is left out:
# the tiny model's random frozen vision tower barely sees it at 112 px; contrast loss can be added with --families
# (docs/learning.md has the measurements).
FAMILIES = ("gaussian_blur", "gaussian_noise", "brighten", "darken")


@dataclass(frozen=True)
class TaskSpec:
    """What build_task writes; saved beside the data, so a later stage can check it reads the data it expects."""

    families: tuple[str, ...] = FAMILIES
    train_sources: int = 1000
    heldout_sources: int = 8
    test_sources: int = 8
    per_source: int = 5  # distorted variants of each train scene (+ the pristine scene itself)
    per_source_eval: int = 10  # of each held-out / test scene: more points per scene, a steadier SRCC
    size: int = 112
    seed: int = 0

    def sources(self, split: str) -> range:
        n = {"train": self.train_sources, "heldout": self.heldout_sources, "test": self.test_sources}[split]
        return range(FIRST_INDEX[split], FIRST_INDEX[split] + n)


def source_of(sample_id: str) -> str:
    """The scene a scoring record comes from: `<scene>_ref_score` or `<scene>_<NNN>_score` -> `<scene>`."""
    return re.sub(r"_(ref|\d{3})_score$", "", sample_id)


def build_task(spec: TaskSpec, out: str | Path, workers: int = 1) -> dict:
    """Write `<out>/{train,heldout,test}.json` (scoring records, image paths relative to `out`), the images, and
    `<out>/task.json` (the spec, counts and baselines). Returns that summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"spec": asdict(spec), "splits": {}}
    stats = {}
    for split in SPLITS:
        per = spec.per_source if split == "train" else spec.per_source_eval
        with tempfile.TemporaryDirectory() as sources:  # the generator copies each pristine scene into `out`
            write_scenes(sources, spec.seed, spec.sources(split), spec.size, prefix=f"{split}_", workers=workers)
            made = make_perception_data(sources, out, per_image=per, seed=spec.seed, workers=workers,
                                        region_prob=0.0, max_side=spec.size, families=list(spec.families),
                                        progress=False)
        if made["skipped"]:
            raise RuntimeError(f"{split}: {made['skipped']} scene(s) could not be distorted: {made['bad'][:3]}")
        # the generator's long question is dropped: every stage uses vqrl.data.prompts' default question
        records = [{k: v for k, v in r.items() if k != "question"} for r in _read(out / "scoring.json")]
        (out / f"{split}.json").write_text(json.dumps(records, indent=1))
        stats[split] = (baselines.statistics([out / r["image"] for r in records]), [r["solution"] for r in records])
        summary["splits"][split] = {"file": str(out / f"{split}.json"), "records": len(records),
                                    "sources": len({source_of(r["sample_id"]) for r in records}),
                                    "weak_variants": made["weak"]}
    for kind in ("scoring", "distortion", "choice", "grounding", "all"):  # the last split's; not ours to keep
        (out / f"{kind}.json").unlink(missing_ok=True)
    summary["baselines"] = baselines.fit_and_score(stats["train"], {s: stats[s] for s in SPLITS if s != "train"})
    (out / "task.json").write_text(json.dumps(summary, indent=1))
    return _read(out / "task.json")  # as a later stage will read it (lists, not tuples)


def load_task(out: str | Path, spec: TaskSpec | None = None) -> dict:
    """The summary of a task already built in `out` (checked against `spec` when given)."""
    summary = _read(Path(out) / "task.json")
    if spec is not None and summary["spec"] != json.loads(json.dumps(asdict(spec))):
        raise ValueError(f"{out}/task.json was built from {summary['spec']}, not {asdict(spec)}")
    return summary


def build_or_load_task(spec: TaskSpec, out: str | Path, workers: int = 1) -> dict:
    """The task in `out`: built there first if it has no task.json (the probe scripts' --data folders); a folder
    built from another spec is an error, not a silent reuse."""
    if (Path(out) / "task.json").exists():
        return load_task(out, spec)
    return build_task(spec, out, workers=workers)


def _read(path: Path):
    return json.loads(path.read_text())
