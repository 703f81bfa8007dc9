"""vqrl_settings.json: the prompt and vision settings a model was trained with, written into every checkpoint and
final/, so that `vqrl eval` scores the model under the same ones unless told otherwise.

It writes and reads one small JSON file; it decides nothing about training or evaluation.
"""

from __future__ import annotations

import json
import os

FILENAME = "vqrl_settings.json"
VERSION = 1

# What shapes the input a model learned from, by VQRLConfig field name (`vqrl eval` has a flag for each).
PROMPT_FIELDS = ("think", "system_prompt", "use_record_question")
VISION_FIELDS = ("min_pixels", "max_pixels", "video_fps", "video_max_frames", "video_max_pixels", "video_total_pixels")
SETTINGS = PROMPT_FIELDS + VISION_FIELDS
# Their defaults when a model carries none: VQRLConfig's (a test keeps the two equal). None: the processor's own.
DEFAULTS = {"think": True, "system_prompt": None, "use_record_question": True, "min_pixels": None, "max_pixels": None,
            "video_fps": 2.0, "video_max_frames": 16, "video_max_pixels": None, "video_total_pixels": None}


def of_config(args) -> dict:
    """The settings of a training config, plus what made the model (trainer, rewards) for the record."""
    out = {"vqrl_settings_version": VERSION, **{name: getattr(args, name) for name in SETTINGS}}
    out["trainer"], out["reward_funcs"] = args.trainer, list(args.reward_funcs)
    return out


def write(folder: str, settings: dict) -> str:
    """Write folder/vqrl_settings.json (through a temporary file renamed over it: never half a file)."""
    path = os.path.join(folder, FILENAME)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read(folder: str) -> dict | None:
    """The settings saved with a model (None when the folder has none: a model vqrl did not train, or a hub id);
    ValueError naming the file when it cannot be read."""
    path = os.path.join(folder, FILENAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            settings = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable ({exc}); delete it to evaluate with flags and defaults only") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: not a JSON object")
    return {key: settings[key] for key in SETTINGS if key in settings}
