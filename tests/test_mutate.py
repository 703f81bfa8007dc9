"""The mutation tool itself (scripts/mutate.py): which mutants it plants, that each one compiles and is the one named,
that sampling is deterministic, that the mutated file is always restored, and how tests are chosen per mutant."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("vqrl_mutate_tool", ROOT / "scripts" / "mutate.py")
mutate = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = mutate  # dataclasses need the module registered
_spec.loader.exec_module(mutate)

SOURCE = textwrap.dedent('''\
    """Docstring: 1 < 2 is not mutated."""
    import os

    LIMIT = 3


    def f(x: int = 2, flag: bool = True) -> bool:
        """Also not mutated."""
        # an em dash — before code on the next line moves byte offsets, not characters
        y = "—" if x < LIMIT and not flag else None
        for i in range(x):
            if i == 1:
                break
        assert x > 0
        os.sync()
        msg = f"{x + 1}"
        x += 1
        return x >= 1


    def g(items):
        return items[1:len(items)] if items else max(items or [0])  # pragma: no mutate


    if __name__ == "__main__":
        f(1 + 2)
''')


@pytest.fixture
def found():
    return mutate.Finder("src/vqrl/m.py", SOURCE.encode()).run()


def test_operators_and_places(found):
    ops = {(m.line, m.op) for m in found}
    assert (4, "3->2") in ops  # module constant
    assert (7, "2->1") in ops and (7, "True->False") in ops  # defaults
    assert {(10, "Lt->LtE"), (10, "And->Or"), (10, "drop-not")} <= ops
    assert {(12, "Eq->NotEq"), (12, "1->0"), (13, "break->continue")} <= ops
    assert {(15, "remove-call"), (17, "Add=->Sub="), (18, "GtE->Gt"), (18, "return-None"), (18, "return-not")} <= ops
    lines = {m.line for m in found}
    assert not lines & {1, 8, 14, 16, 22, 26}  # docstrings, assert, f-string, pragma, main guard
    assert all(m.module_level == (m.line in (4, 7)) for m in found)
    ids = [m.id for m in found]
    assert len(ids) == len(set(ids)) and "src/vqrl/m.py:17:1->0" in ids


def test_every_mutant_compiles_and_changes_only_its_line(found):
    source = SOURCE.encode()
    original = source.decode().splitlines()
    for m in found:
        assert mutate.valid(m, source), m.id
        mutated = m.apply(source).decode().splitlines()
        changed = [i + 1 for i, (a, b) in enumerate(zip(original, mutated)) if a != b]
        assert len(mutated) == len(original) and changed == [m.line], m.id
    lt = next(m for m in found if m.op == "Lt->LtE")
    assert mutate.diff(lt, source).splitlines() == ['-    y = "—" if x < LIMIT and not flag else None',
                                                    '+    y = "—" if (x <= LIMIT) and not flag else None']


def test_sampling_is_seeded():
    mutants = mutate.find_mutants(ROOT, ["modeling/vision_once.py"])
    sources = {m.path: (ROOT / m.path).read_bytes() for m in mutants}
    first = [m.id for m in mutate.sample(mutants, sources, seed=3, k=10)]
    assert first == [m.id for m in mutate.sample(mutants, sources, seed=3, k=10)]
    assert first != [m.id for m in mutate.sample(mutants, sources, seed=4, k=10)]
    assert len(set(first)) == 10


def test_equivalence_list_is_parsed_and_checked(tmp_path):
    good = tmp_path / "eq.txt"
    good.write_text("# comment\n\nsrc/vqrl/a.py:3:Lt->LtE | x = a | b if c < d else e | same because...\n")
    assert mutate.read_equivalents(good) == {
        "src/vqrl/a.py:3:Lt->LtE": ("x = a | b if c < d else e", "same because...")}
    bad = tmp_path / "bad.txt"
    bad.write_text("src/vqrl/a.py:3:Lt->LtE | no reason\n")
    with pytest.raises(SystemExit, match=r"bad.txt:1: expected 'file:line:operator \| code \| reason'"):
        mutate.read_equivalents(bad)
    # every shipped entry still finds its mutant (by id, or by operator and code after edits above it)
    shipped = mutate.read_equivalents(ROOT / mutate.EQUIVALENT_FILE)
    parts = sorted(p.name for p in (ROOT / "src/vqrl").iterdir() if not p.name.startswith(("_", ".")))
    everything = mutate.find_mutants(ROOT, parts)
    found, moved, stale = mutate.resolve_equivalents(shipped, everything)
    assert not stale and len(found) == len(shipped)


def test_an_equivalence_entry_follows_its_line_when_the_file_above_changes():
    entries = {"src/vqrl/m.py:10:Lt->LtE": ('y = "—" if x < LIMIT and not flag else None', "because"),
               "src/vqrl/m.py:12:Eq->NotEq": ("if i == 2:", "the line changed")}
    shifted = ("# a new line\n" * 3 + SOURCE).encode()
    found, moved, stale = mutate.resolve_equivalents(entries, mutate.Finder("src/vqrl/m.py", shifted).run())
    assert found == {"src/vqrl/m.py:13:Lt->LtE": "because"}
    assert moved == [("src/vqrl/m.py:10:Lt->LtE", "src/vqrl/m.py:13:Lt->LtE")]
    assert stale == ["src/vqrl/m.py:12:Eq->NotEq"]


class _Interrupting:
    stopping = False

    def run(self, *args, **kwargs):
        raise KeyboardInterrupt


def _tree_with_lt_mutant(tmp_path):
    """A one-module tree holding SOURCE, and its `<` -> `<=` mutant."""
    tree = tmp_path / "tree"
    target = tree / "src" / "vqrl" / "m.py"
    target.parent.mkdir(parents=True)
    target.write_bytes(SOURCE.encode())
    return tree, target, next(m for m in mutate.Finder("src/vqrl/m.py", SOURCE.encode()).run() if m.op == "Lt->LtE")


def test_the_mutated_file_is_restored_even_on_ctrl_c(tmp_path):
    tree, target, m = _tree_with_lt_mutant(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        mutate.run_mutant(m, tree, ["tests/test_x.py"], 10, _Interrupting())
    assert target.read_bytes() == SOURCE.encode()


class _Scripted:
    """A runner that answers each call with the next (exit code, output, seconds) and records the commands."""

    stopping = False

    def __init__(self, answers):
        self.answers, self.commands = list(answers), []

    def run(self, cmd, cwd, env, timeout):
        self.commands.append(cmd)
        return self.answers.pop(0)


def test_tests_a_mutant_makes_vanish_are_dropped_and_the_rest_rerun(tmp_path):
    tree, target, m = _tree_with_lt_mutant(tmp_path)
    runner = _Scripted([(4, f"ERROR: not found: {tree}/tests/test_q.py::test_a\n(no match in any of [...])", 1.0),
                        (1, "FAILED tests/test_q.py::test_b - assert 1 == 2", 2.0)])
    result = mutate.run_mutant(m, tree, ["tests/test_q.py::test_a[x]", "tests/test_q.py::test_b"], 60, runner)
    assert result["status"] == "killed" and result["killed_by"] == "tests/test_q.py::test_b"
    assert result["vanished"] == ["tests/test_q.py::test_a[x]"] and result["seconds"] == 3.0
    assert runner.commands[1][-2:] == ["-x", "tests/test_q.py::test_b"]
    assert target.read_bytes() == SOURCE.encode()
    survivor = _Scripted([(4, f"ERROR: not found: {tree}/tests/test_q.py::test_a", 1.0)])
    assert mutate.run_mutant(m, tree, ["tests/test_q.py::test_a[x]"], 60, survivor)["status"] == "survived"


def test_tests_are_chosen_by_coverage_else_by_the_module_map():
    base = {"tests": [{"nodeid": "tests/test_a.py::slow", "file": "tests/test_a.py", "outcome": "passed", "seconds": 5},
                      {"nodeid": "tests/test_a.py::fast", "file": "tests/test_a.py", "outcome": "passed", "seconds": 1},
                      {"nodeid": "tests/test_b.py::t", "file": "tests/test_b.py", "outcome": "passed", "seconds": 2},
                      {"nodeid": "tests/test_rewards.py::t", "file": "tests/test_rewards.py", "outcome": "passed",
                       "seconds": 1}],
            "lines": {"src/vqrl/rewards/scoring.py:10": {"call": [0, 2], "setup": []},
                      "src/vqrl/rewards/scoring.py:11": {"call": [], "setup": [1]}}}

    def mutant(line, module_level=False):
        return mutate.Mutant(id="x", path="src/vqrl/rewards/scoring.py", line=line, end_line=line, op="o",
                             family="compare", start=0, end=0, replacement="", module_level=module_level, code="")

    # the tests that ran the line, fastest first, then the rest of their files and of the module's mapped files
    assert mutate.select_tests(mutant(10), base, ROOT) == (
        ["tests/test_b.py::t", "tests/test_a.py::slow", "tests/test_a.py::fast", "tests/test_rewards.py::t"],
        "covered")
    # a line run by a fixture's setup: every test of that file first
    assert mutate.select_tests(mutant(11), base, ROOT)[0] == [
        "tests/test_a.py::fast", "tests/test_a.py::slow", "tests/test_rewards.py::t"]
    # not executed by any test: the test files mapped to the module
    assert mutate.select_tests(mutant(12), base, ROOT) == (["tests/test_rewards.py::t"], "not covered")
    assert mutate.select_tests(mutant(10, module_level=True), base, ROOT)[1] == "module-level"


def test_vllm_modules_map_to_vllm_tests_that_exist():
    """--vllm runs these tests for mutants of the vLLM modules: each named test exists in tests/test_vllm.py (a
    renamed test would otherwise be reported as 'not found'), and modules without vLLM code get none."""
    import ast

    defined = {n.name for n in ast.parse((ROOT / "tests/test_vllm.py").read_text()).body
               if isinstance(n, ast.FunctionDef)}
    for nodeids in mutate.VLLM_TESTS.values():
        assert nodeids and all(n.startswith("tests/test_vllm.py::") and n.split("::")[1] in defined for n in nodeids)
    assert mutate.vllm_tests("src/vqrl/eval/vllm_backend.py") == [
        "tests/test_vllm.py::test_eval_vllm_backend_agrees_with_hf"]
    rollouts = mutate.vllm_tests("src/vqrl/trainers/vllm_rollouts.py")
    assert rollouts == mutate.vllm_tests("src/vqrl/trainers/vllm.py") and len(rollouts) == 2
    assert set(rollouts) < set(mutate.vllm_tests("src/vqrl/modeling/vllm_requests.py"))
    assert mutate.vllm_tests("src/vqrl/data/media.py") == mutate.vllm_tests("src/vqrl/eval/run.py") == []


class _Recording(_Scripted):
    def run(self, cmd, cwd, env, timeout):
        self.envs = [*getattr(self, "envs", []), env]
        self.timeouts = [*getattr(self, "timeouts", []), timeout]
        return super().run(cmd, cwd, env, timeout)


def test_with_vllm_a_survivor_of_the_default_suite_runs_its_vllm_tests_in_the_vllm_venv(tmp_path):
    tree, target, m = _tree_with_lt_mutant(tmp_path)
    survived = {"status": "survived", "seconds": 4.0, "killed_by": None, "rc": 0, "vanished": [], "log_tail": ""}
    extra = ["tests/test_vllm.py::test_eval_vllm_backend_agrees_with_hf"]
    runner = _Recording([(1, f"FAILED {extra[0]} - assert 0.1 < 0.01", 50.0)])
    res, how = mutate.with_vllm_tests(m, tree, dict(survived), "covered", extra, "/venvs/vllm/bin/python", runner)
    assert res["status"] == "killed" and res["killed_by"] == extra[0] and res["seconds"] == 54.0
    assert how == "covered; vLLM tests run"
    (cmd,) = runner.commands
    assert cmd[:3] == ["/venvs/vllm/bin/python", "-m", "pytest"] and cmd[-4:] == ["-m", "vllm", "-x", extra[0]]
    assert runner.envs[0]["VLLM_TARGET_DEVICE"] == "cpu" and runner.envs[0]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert runner.envs[0]["PYTHONPATH"] == str(tree / "src") and runner.timeouts == [mutate.VLLM_TIMEOUT]
    assert target.read_bytes() == SOURCE.encode()  # restored after the vLLM run too
    # the vLLM tests pass: still a survivor, now of both suites
    res, how = mutate.with_vllm_tests(m, tree, dict(survived), "covered", extra, "/py", _Recording([(0, "", 50.0)]))
    assert res["status"] == "survived" and how == "covered; vLLM tests run"


def test_without_vllm_or_for_other_mutants_no_vllm_test_runs(tmp_path):
    tree, _, m = _tree_with_lt_mutant(tmp_path)
    survived = {"status": "survived", "seconds": 4.0, "killed_by": None, "rc": 0, "vanished": [], "log_tail": ""}
    extra = ["tests/test_vllm.py::test_eval_vllm_backend_agrees_with_hf"]
    runner = _Recording([])
    assert mutate.with_vllm_tests(m, tree, survived, "covered", extra, None, runner) == (
        survived, "covered; its vLLM tests not run (--vllm)")
    killed = {**survived, "status": "killed", "rc": 1}
    assert mutate.with_vllm_tests(m, tree, killed, "covered", extra, "/py", runner) == (killed, "covered")
    assert mutate.with_vllm_tests(m, tree, survived, "covered", [], "/py", runner) == (survived, "covered")
    assert runner.commands == []


def test_vllm_needs_the_vllm_venv(tmp_path):
    with pytest.raises(SystemExit, match=r"--vllm needs the vLLM venv's Python at .*nowhere/python"):
        mutate.main(["--vllm", "--vllm-python", str(tmp_path / "nowhere" / "python"), "--mutant", "x"])


def test_only_tests_runs_exactly_the_tests_given_without_a_baseline(tmp_path, monkeypatch):
    """`--only-tests`: the quick check that a new test kills a mutant skips the 5-minute traced baseline."""
    calls = []

    def no_baseline(*args, **kwargs):
        raise AssertionError("the baseline ran")

    def fake_run(m, tree, nodeids, timeout, runner, stop=True, **kwargs):
        calls.append((m.id, nodeids, timeout, (tree / m.path).is_file()))
        return {"status": "killed", "seconds": 0.1, "killed_by": nodeids[0], "rc": 1, "vanished": [], "log_tail": ""}

    monkeypatch.setattr(mutate, "baseline", no_baseline)
    monkeypatch.setattr(mutate, "run_mutant", fake_run)
    monkeypatch.setattr(mutate, "tree_files", lambda root: ["src/vqrl/rewards/scoring.py"])
    ident = next(m.id for m in mutate.find_mutants(ROOT, ["rewards/scoring.py"]))
    assert mutate.main(["--mutant", ident, "--only-tests", "tests/test_rewards.py::test_a", "tests/test_b.py",
                        "--out", str(tmp_path / "out")]) == 0
    assert calls == [(ident, ["tests/test_rewards.py::test_a", "tests/test_b.py"], 900.0, True)]
    assert '"killed_by": "tests/test_rewards.py::test_a"' in (tmp_path / "out" / "report.json").read_text()


@pytest.mark.parametrize("other", [["--tests", "tests/test_a.py"], ["--vllm"], ["--fresh-baseline"]])
def test_only_tests_refuses_options_it_would_ignore(other, capsys):
    with pytest.raises(SystemExit) as exit_info:
        mutate.main(["--mutant", "x", "--only-tests", "tests/test_a.py", *other])
    assert exit_info.value.code == 2
    assert "--only-tests runs exactly the tests it names" in capsys.readouterr().err
