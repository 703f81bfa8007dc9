"""docs/extending.md runs: every Python block of each section, in order, in an empty folder (a block that starts with
`# file: NAME.py` is saved there instead of run), and every `vqrl train` line parses and builds its trainer class and
rewards."""

from __future__ import annotations

import os
import re
import shlex
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "extending.md")
BLOCK = re.compile(r"^```(python|bash)\n(.*?)^```", re.S | re.M)


def sections() -> dict[str, list[tuple[str, str]]]:
    """`## title` -> its (language, code) blocks, in order."""
    with open(PAGE, encoding="utf-8") as f:
        text = f.read()
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {title.strip(): BLOCK.findall(body) for title, body in zip(parts[1::2], parts[2::2])}


SECTIONS = sections()


def test_the_page_has_the_four_worked_examples():
    assert list(SECTIONS) == ["A reward", "A trainer", "A dataset converter", "A distortion"]
    for title, blocks in SECTIONS.items():
        assert any(lang == "python" and not code.startswith("# file:") for lang, code in blocks), title


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    from vqrl.datagen import distortions

    os.symlink(os.path.join(ROOT, "examples"), tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    registered = dict(distortions.DISTORTIONS)
    before = set(sys.modules)
    yield tmp_path
    distortions.DISTORTIONS.clear()
    distortions.DISTORTIONS.update(registered)
    for name in set(sys.modules) - before:
        if name.startswith("my_"):
            del sys.modules[name]


def _check_train_line(line: str) -> None:
    from vqrl.config import parse
    from vqrl.rewards import build_reward_funcs, reward_options
    from vqrl.trainers import get_trainer

    argv = shlex.split(line)
    assert argv[:2] == ["vqrl", "train"], line
    args, _ = parse(argv[2:] + ["--use_cpu", "true"])
    get_trainer(args.trainer)
    build_reward_funcs(args.reward_funcs, **reward_options(args))


@pytest.mark.parametrize("title", list(SECTIONS))
def test_section_runs(title, workdir):
    for lang, code in SECTIONS[title]:
        if lang == "bash":
            for line in code.splitlines():
                if line.startswith("vqrl train"):
                    _check_train_line(line)
            continue
        first = code.splitlines()[0]
        if first.startswith("# file: "):
            (workdir / first[len("# file: "):].strip()).write_text(code)
            continue
        exec(compile(code, f"{PAGE} ({title})", "exec"), {"__name__": "__extending__"})
