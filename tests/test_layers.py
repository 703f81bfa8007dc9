"""Imports go down the layers only: read every module of src/vqrl with ast (imports inside functions included) and
check each import against the rules below. A new upward import fails here with the file, the line and the rule."""

from __future__ import annotations

import ast
import os

import pytest

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

# (importing packages, imported packages, why): a module under any of the first may import nothing under the second.
RULES = [
    (("vqrl.data", "vqrl.rewards", "vqrl.models", "vqrl.modeling", "vqrl.training", "vqrl.datagen"),
     ("vqrl.trainers", "vqrl.eval", "vqrl.grpo", "vqrl.config", "vqrl.config_checks", "vqrl.cli", "vqrl.bench",
      "vqrl.learning"),
     "the lower layers know nothing of trainers, evaluation or the entry points"),
    (("vqrl.data",), ("vqrl.rewards",), "rewards read data columns, data never reads rewards"),
    (("vqrl.modeling",), ("vqrl.rewards", "vqrl.models", "vqrl.training"),
     "modeling (how a model is fed) builds on data only"),
    (("vqrl.eval",), ("vqrl.trainers", "vqrl.grpo"),
     "evaluation shares vqrl.modeling with the trainers, never imports them"),
    (("vqrl.trainers",), ("vqrl.eval", "vqrl.grpo", "vqrl.cli"), "trainers share vqrl.modeling with evaluation"),
]
# The tiny test-model factory is for tests, the demo and experiments: product code never imports it, except the
# entry points that build a tiny model on purpose.
TINY = "vqrl.models.tiny"
MAY_IMPORT_TINY = ("vqrl.models", "vqrl.training.warmup", "vqrl.learning", "vqrl.cli")


def _modules() -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(os.path.join(SRC, "vqrl")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, SRC)[:-3].split(os.sep)
                out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def imports_of(module: str, path: str) -> list[tuple[int, str]]:
    """(line, imported vqrl module) for every import in the file, relative ones resolved."""
    is_package = path.endswith("__init__.py")
    package = module if is_package else module.rpartition(".")[0]
    out = []
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "vqrl"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "vqrl":
                continue
            for alias in node.names:  # `from . import vision`: the submodule, where there is one
                sub = f"{target}.{alias.name}"
                out.append((node.lineno, sub if sub in MODULES else target))
    return out


def _under(name: str, packages) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_the_module_list_is_real():
    assert {"vqrl.modeling.vision", "vqrl.trainers.base", "vqrl.eval.run", "vqrl.data.converters"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
    problems = []
    for line, target in imports_of(module, MODULES[module]):
        for importers, imported, why in RULES:
            if _under(module, importers) and _under(target, imported):
                problems.append(f"{MODULES[module]}:{line}: {module} imports {target}: {why}")
        if target == TINY and not _under(module, MAY_IMPORT_TINY):
            problems.append(f"{MODULES[module]}:{line}: {module} imports the tiny test-model factory")
    assert not problems, "\n".join(problems)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The rules bite: a relative import from eval/ into trainers/ inside a function is found."""
    path = tmp_path / "bad.py"
    path.write_text("def f():\n    from ..trainers import base\n    from ..modeling import vision\n")
    monkeypatch.setitem(MODULES, "vqrl.eval.bad", str(path))
    assert imports_of("vqrl.eval.bad", str(path)) == [(2, "vqrl.trainers.base"), (3, "vqrl.modeling.vision")]
    with pytest.raises(AssertionError, match=r"bad.py:2: vqrl.eval.bad imports vqrl.trainers.base"):
        test_imports_go_down_the_layers("vqrl.eval.bad")
