#!/usr/bin/env python3
"""Mutation testing for vqrl: plant one plausible bug at a time in a copy of src/ and run the tests that reach it.

It never edits the tree it is run from: mutants live in throw-away copies under the temp dir, restored after each
mutant and deleted at the end (also on Ctrl-C). Deterministic for a given tree, `--seed` and `--max-mutants`.
How to run it and the latest report: docs/testing.md.
"""

from __future__ import annotations

import argparse
import ast
import collections
import concurrent.futures
import dataclasses
import difflib
import fnmatch
import hashlib
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODULES = ("rewards", "trainers", "modeling", "training", "watchdog.py", "data", "eval")
EQUIVALENT_FILE = "tests/mutation_equivalent.txt"

# Test files that exercise each part of src/ (globs; every matching prefix applies; test files naming the module
# are added). A mutant runs the tests that executed its line first, then the rest of these files (select_tests).
TEST_MAP = {
    "src/vqrl/rewards/": ["test_rewards*.py", "test_refine*.py", "test_recipes*.py"],
    "src/vqrl/trainers/": ["test_trainer*.py", "test_equivalence*.py", "test_vision_once*.py", "test_refine*.py",
                           "test_resume*.py", "test_recipes*.py", "test_data_order*.py", "test_trl_seam*.py",
                           "test_vllm_rollouts*.py"],
    "src/vqrl/training/": ["test_resume*.py", "test_checkpoint*.py", "test_training*.py", "test_trainer.py",
                           "test_disk_full*.py", "test_saved_settings*.py", "test_activation_budget*.py",
                           "test_data_order*.py"],
    "src/vqrl/training/heartbeat.py": ["test_watchdog*.py", "test_heartbeat*.py"],
    "src/vqrl/watchdog.py": ["test_watchdog*.py"],
    "src/vqrl/modeling/": ["test_trainer*.py", "test_equivalence*.py", "test_vision_once*.py", "test_refine*.py",
                           "test_eval_run*.py", "test_vllm_rollouts*.py"],
    "src/vqrl/data/": ["test_data*.py", "test_trainer.py", "test_eval_run*.py", "test_training_data*.py",
                       "test_media_prefetch*.py", "test_video_decode*.py"],
    "src/vqrl/data/converters.py": ["test_converters*.py"],
    "src/vqrl/eval/": ["test_eval*.py", "test_converters*.py", "test_refine*.py"],
    "src/vqrl/datagen/": ["test_datagen*.py"],
    "src/vqrl/models/": ["test_models*.py", "test_shapes*.py"],
    "src/vqrl/launch.py": ["test_launch*.py"],
    "src/vqrl/grpo.py": ["test_trainer*.py", "test_recipes*.py", "test_resume*.py"],
}

# Sources whose behaviour only the vLLM tests check (tests/test_vllm.py, `make test-vllm`: they need vLLM, in its own
# venv, and are not in the default suite). With --vllm, a mutant of one of these that the default suite lets through
# is run against these tests too, in .venv-vllm with vLLM's CPU settings (an engine start costs 35-50 s each).
VLLM_TESTS = {
    "src/vqrl/eval/vllm_backend.py": ["tests/test_vllm.py::test_eval_vllm_backend_agrees_with_hf"],
    "src/vqrl/trainers/vllm*.py": ["tests/test_vllm.py::test_vllm_rollouts_with_images_and_videos_train_and_sync_weights",
                                   "tests/test_vllm.py::test_use_vllm_with_every_trainer_small_micro_batches_mixed_media"],
    "src/vqrl/modeling/vllm_requests.py": [
        "tests/test_vllm.py::test_vllm_rollouts_with_images_and_videos_train_and_sync_weights",
        "tests/test_vllm.py::test_eval_vllm_backend_agrees_with_hf",
        "tests/test_vllm.py::test_use_vllm_with_every_trainer_small_micro_batches_mixed_media"],
    "src/vqrl/modeling/vllm_compat.py": ["tests/test_vllm.py::test_logprob_check_script_scores_every_prompt_kind"],
}
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu"}  # as `make test-vllm`
VLLM_PYTHON = ".venv-vllm/bin/python"
VLLM_TIMEOUT = 900.0  # seconds for one mutant's vLLM tests (engine starts, then a few small generations)

# ---------------------------------------------------------------------------------------------------- mutants
CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
BIN_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div}
CALL_SWAP = {"min": "max", "max": "min", "any": "all", "all": "any"}
QUIET_CALLS = {("logger", "debug"), ("logger", "info"), ("logging", "debug"), ("logging", "info")}
SMALL_INT = 16  # off-by-one only for small integer constants (indices, counts, ranks), not e.g. a 7200 s timeout
PRAGMAS = ("pragma: no mutate", "pragma: no cover")
OPERATORS = ("compare", "boolop", "not", "arith", "augassign", "const", "bool", "slice", "return-none",
             "return-not", "remove-call", "break-continue", "negate-cond", "swap-call")


@dataclasses.dataclass
class Mutant:
    id: str
    path: str  # relative to the repository root
    line: int
    end_line: int
    op: str  # e.g. "Lt->LtE", "remove-call", "1->0" (a constant)
    family: str  # one of OPERATORS
    start: int  # byte offsets of the replaced segment
    end: int
    replacement: str
    module_level: bool  # runs at import time (module/class body, defaults, decorators)
    code: str  # the original line, stripped

    def apply(self, source: bytes) -> bytes:
        return source[:self.start] + self.replacement.encode() + source[self.end:]


def _name(op) -> str:
    return type(op).__name__ if not isinstance(op, type) else op.__name__


def _is_docstring(stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _is_main_guard(node) -> bool:
    test = node.test
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__") or \
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")


def _concatenation(node: ast.BinOp) -> bool:
    """`"a" + b`, `[x] * 3`, `(a,) + b`: sequence arithmetic, where + -> - is a type error, not a plausible bug."""
    seq = (ast.JoinedStr, ast.List, ast.Tuple, ast.ListComp)
    return any(isinstance(s, seq) or (isinstance(s, ast.Constant) and isinstance(s.value, (str, bytes)))
               for s in (node.left, node.right))


def _boolean(expr) -> bool:
    return isinstance(expr, (ast.Compare, ast.BoolOp)) or (isinstance(expr, ast.UnaryOp) and isinstance(
        expr.op, ast.Not)) or (isinstance(expr, ast.Constant) and isinstance(expr.value, bool)) or (
        isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in ("isinstance", "any",
                                                                                              "all", "bool"))


class Finder:
    """Walks one module's AST and lists its mutants (skipping docstrings, annotations, f-strings, asserts, main
    guards and lines marked `pragma: no mutate` / `pragma: no cover`)."""

    def __init__(self, path: str, source: bytes):
        self.path, self.source = path, source
        self.lines = [line.decode() for line in source.splitlines()]  # the line breaks Python counts
        self.starts = [0]
        for line in source.splitlines(keepends=True):
            self.starts.append(self.starts[-1] + len(line))
        self.found: list[Mutant] = []

    def offset(self, line: int, col: int) -> int:
        return self.starts[line - 1] + col

    def add(self, node, family: str, op: str, replacement: str, module_level: bool) -> None:
        line = node.lineno
        if any(p in self.lines[line - 1] for p in PRAGMAS):
            return
        self.found.append(Mutant(
            id="", path=self.path, line=line, end_line=node.end_lineno, op=op, family=family,
            start=self.offset(node.lineno, node.col_offset), end=self.offset(node.end_lineno, node.end_col_offset),
            replacement=replacement, module_level=module_level, code=self.lines[line - 1].strip()))

    def run(self) -> list[Mutant]:
        self.body(ast.parse(self.source).body, False)
        seen = collections.Counter()
        for m in sorted(self.found, key=lambda m: (m.start, m.end, m.op)):
            key = f"{m.path}:{m.line}:{m.op}"
            seen[key] += 1
            m.id = key if seen[key] == 1 else f"{key}#{seen[key]}"
        return sorted(self.found, key=lambda m: (m.start, m.end, m.op))

    # -- statements
    def body(self, stmts, in_function: bool) -> None:
        for stmt in stmts:
            if _is_docstring(stmt):
                continue
            if any(p in self.lines[stmt.lineno - 1] for p in PRAGMAS):
                continue
            self.stmt(stmt, in_function)

    def stmt(self, node, fn: bool) -> None:
        mod = not fn
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in node.decorator_list:
                self.expr(d, mod)
            args = node.args
            for d in [*args.defaults, *[d for d in args.kw_defaults if d is not None]]:
                self.expr(d, mod)
            self.body(node.body, True)
        elif isinstance(node, ast.ClassDef):
            for e in [*node.decorator_list, *node.bases, *[k.value for k in node.keywords]]:
                self.expr(e, mod)
            self.body(node.body, fn)
        elif isinstance(node, ast.If) and _is_main_guard(node):
            return
        elif isinstance(node, (ast.Assert, ast.Import, ast.ImportFrom, ast.Global, ast.Nonlocal, ast.Pass)):
            return
        elif isinstance(node, ast.Return):
            if node.value is not None:
                value = node.value.value if isinstance(node.value, ast.Constant) else ...
                if value is not None and value is not False:  # `return False` -> `return None`: the same falsy
                    self.add(node, "return-none", "return-None", "return None", mod)
                if _boolean(node.value):
                    self.add(node, "return-not", "return-not", f"return not ({ast.unparse(node.value)})", mod)
                self.expr(node.value, mod)
        elif isinstance(node, ast.Expr):
            call = node.value
            if isinstance(call, ast.Call):
                f = call.func
                quiet = isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and \
                    (f.value.id, f.attr) in QUIET_CALLS
                if not quiet:
                    self.add(node, "remove-call", "remove-call", "pass", mod)
            self.expr(call, mod)
        elif isinstance(node, (ast.Break, ast.Continue)):
            other = "continue" if isinstance(node, ast.Break) else "break"
            self.add(node, "break-continue", f"{_name(node).lower()}->{other}", other, mod)
        elif isinstance(node, ast.AugAssign):
            if type(node.op) in (ast.Add, ast.Sub):
                new = ast.AugAssign(target=node.target, op=BIN_SWAP[type(node.op)](), value=node.value)
                self.add(node, "augassign", f"{_name(node.op)}=->{_name(new.op)}=", ast.unparse(new), mod)
            self.expr(node.value, mod)
        elif isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self.expr(node.value, mod)
        elif isinstance(node, (ast.If, ast.While)):
            self.condition(node.test, mod)
            self.expr(node.test, mod)
            self.body(node.body, fn)
            self.body(node.orelse, fn)
        elif isinstance(node, ast.Try):
            self.body(node.body, fn)
            for h in node.handlers:
                if not any(p in self.lines[h.lineno - 1] for p in PRAGMAS):
                    self.body(h.body, fn)
            self.body(node.orelse, fn)
            self.body(node.finalbody, fn)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            self.expr(node.iter, mod)
            self.body(node.body, fn)
            self.body(node.orelse, fn)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                self.expr(item.context_expr, mod)
            self.body(node.body, fn)
        else:  # Assign, Raise, Delete, Match...: mutate the expressions inside
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    self.expr(child, mod)
                elif isinstance(child, ast.stmt):
                    self.stmt(child, fn)

    def condition(self, test, mod: bool) -> None:
        """`if x:` on a bare value (a name, attribute, call or subscript) -> `if not x:`."""
        if isinstance(test, (ast.Name, ast.Attribute, ast.Call, ast.Subscript)):
            self.add(test, "negate-cond", "negate-cond", f"(not {ast.unparse(test)})", mod)

    # -- expressions
    def expr(self, node, mod: bool) -> None:
        if node is None or isinstance(node, ast.JoinedStr):
            return
        if isinstance(node, ast.Lambda):  # its body runs later, but where it is defined decides the tests
            self.expr(node.body, mod)
            return
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in CMP_SWAP:
                    new_ops = list(node.ops)
                    new_ops[i] = CMP_SWAP[type(op)]()
                    new = ast.Compare(left=node.left, ops=new_ops, comparators=node.comparators)
                    self.add(node, "compare", f"{_name(op)}->{_name(new_ops[i])}", f"({ast.unparse(new)})", mod)
        elif isinstance(node, ast.BoolOp):
            other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            self.add(node, "boolop", f"{_name(node.op)}->{_name(other)}",
                     f"({ast.unparse(ast.BoolOp(op=other, values=node.values))})", mod)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self.add(node, "not", "drop-not", f"({ast.unparse(node.operand)})", mod)
        elif isinstance(node, ast.BinOp) and type(node.op) in BIN_SWAP and not _concatenation(node):
            new = ast.BinOp(left=node.left, op=BIN_SWAP[type(node.op)](), right=node.right)
            self.add(node, "arith", f"{_name(node.op)}->{_name(new.op)}", f"({ast.unparse(new)})", mod)
        elif isinstance(node, ast.IfExp):
            self.condition(node.test, mod)
        elif isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                self.add(node, "bool", f"{value}->{not value}", str(not value), mod)
            elif isinstance(value, int) and 0 <= value <= SMALL_INT:
                new = value + 1 if value == 0 else value - 1
                self.add(node, "const", f"{value}->{new}", str(new), mod)
        elif isinstance(node, ast.Slice):
            for bound in (node.lower, node.upper):
                if bound is not None and not isinstance(bound, ast.Constant):
                    self.add(bound, "slice", "slice+1", f"({ast.unparse(bound)} + 1)", mod)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in CALL_SWAP:
            self.add(node.func, "swap-call", f"{node.func.id}->{CALL_SWAP[node.func.id]}",
                     CALL_SWAP[node.func.id], mod)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr) or isinstance(child, (ast.comprehension, ast.keyword, ast.Slice)):
                self.expr(child, mod)
            elif isinstance(child, ast.arguments):  # a lambda's defaults
                for d in child.defaults:
                    self.expr(d, mod)


def find_mutants(root: Path, modules: list[str]) -> list[Mutant]:
    files = []
    for module in modules:
        target = root / "src" / "vqrl" / module
        if target.is_dir():
            files += sorted(target.rglob("*.py"))
        elif target.is_file():
            files.append(target)
        else:
            raise SystemExit(f"mutate: no module {module!r} under src/vqrl")
    out = []
    for f in sorted(set(files)):
        out += Finder(f.relative_to(root).as_posix(), f.read_bytes()).run()
    return out


def valid(m: Mutant, source: bytes) -> bool:
    mutated = m.apply(source)
    if mutated == source:
        return False
    try:
        compile(mutated, m.path, "exec")
    except SyntaxError:
        return False
    return True


def diff(m: Mutant, source: bytes) -> str:
    a, b = source.decode().splitlines(), m.apply(source).decode().splitlines()
    lines = [x for x in difflib.unified_diff(a, b, lineterm="", n=0) if not x.startswith(("---", "+++", "@@"))]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- equivalents
def read_equivalents(path: Path) -> dict[str, tuple[str, str]]:
    """`file:line:operator | the original line, stripped | why it cannot change behaviour`, one per line."""
    out = {}
    if not path.is_file():
        return out
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        head, _, rest = raw.partition(" | ")
        code, _, reason = rest.rpartition(" | ")  # the code itself may hold " | "
        parts = [head.strip(), code.strip(), reason.strip()]
        if not all(parts):
            raise SystemExit(f"{path}:{n}: expected 'file:line:operator | code | reason'")
        out[parts[0]] = (parts[1], parts[2])
    return out


def resolve_equivalents(entries: dict[str, tuple[str, str]], mutants: list[Mutant]) -> tuple[dict, list, list]:
    """Map list entries onto today's mutants: by id when its line still holds the same code, else (the file was
    edited above it) the one mutant of that file with the same operator on a line with the same code. Returns
    ({mutant id: reason}, [(entry, its id now)] for moved ones, [entries found nowhere]) for the files searched."""
    by_id = {m.id: m for m in mutants}
    searched = {m.path for m in mutants}
    found, moved, stale = {}, [], []
    for key, (code, reason) in entries.items():
        path, _, rest = key.partition(":")
        if path not in searched:
            continue
        if key in by_id and by_id[key].code == code:
            found[key] = reason
            continue
        op = rest.split(":", 1)[1].split("#")[0]
        same = [m for m in mutants if m.path == path and m.code == code and m.op == op]
        if len(same) == 1:
            found[same[0].id] = reason
            moved.append((key, same[0].id))
        else:
            stale.append(key)
    return found, moved, stale


# ----------------------------------------------------------------------------------------- tree and coverage
def tree_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout.decode().split("\0")
    return sorted(f for f in out if f and not f.startswith((".venv", "outputs/")) and (root / f).is_file()
                  and not (root / f).is_symlink())


def copy_tree(root: Path, files: list[str], dest: Path) -> None:
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, target)


def tree_hash(root: Path, files: list[str]) -> str:
    """Identity of what the baseline depends on: every file but this tool's own (script, list, report page)."""
    h = hashlib.sha256()
    for f in files:
        if f in ("scripts/mutate.py", EQUIVALENT_FILE, "docs/testing.md"):
            continue
        h.update(f.encode() + b"\0" + (root / f).read_bytes() + b"\0")
    return h.hexdigest()[:16]


# Imported by every Python process of the baseline run (the tests' own subprocesses too): records which lines of
# src/vqrl each test phase executes, keyed by $MUTATE_TRACE_KEY, and writes them when the process exits.
TRACER = r'''
import atexit, json, os, sys, threading
_DIR, _SRC, _ROOT = (os.environ[k] for k in ("MUTATE_TRACE_DIR", "MUTATE_TRACE_SRC", "MUTATE_TRACE_ROOT"))
_key = [os.environ.get("MUTATE_TRACE_KEY", "import")]
_hits = {}
_mine = {}

def set_key(key):
    _key[0] = key
    os.environ["MUTATE_TRACE_KEY"] = key

def _local(frame, event, arg):
    if event == "line":
        _hits.setdefault(_key[0], {}).setdefault(frame.f_code.co_filename, set()).add(frame.f_lineno)
    return _local

def _global(frame, event, arg):
    name = frame.f_code.co_filename
    mine = _mine.get(name)
    if mine is None:
        mine = _mine[name] = name.startswith(_SRC)
    if mine:
        _hits.setdefault(_key[0], {}).setdefault(name, set()).add(frame.f_lineno)
        return _local
    return None

def _dump():
    sys.settrace(None)
    out = {k: {os.path.relpath(f, _ROOT): sorted(v) for f, v in files.items()}
           for k, files in _hits.items()}
    with open(os.path.join(_DIR, f"cov-{os.getpid()}.json"), "w") as f:
        json.dump(out, f)

sys.settrace(_global)
threading.settrace(_global)
atexit.register(_dump)
'''

# A pytest plugin (baseline only): keys the tracer by test and phase, and records each test's outcome and time.
PLUGIN = r'''
import json, os, time
import pytest
import sitecustomize

_tests = []

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _tests.append({"nodeid": item.nodeid, "file": item.nodeid.split("::")[0], "outcome": "passed", "seconds": 0.0})
    yield
    sitecustomize.set_key("between")

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    sitecustomize.set_key(f"{len(_tests) - 1}:setup")
    yield

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    sitecustomize.set_key(f"{len(_tests) - 1}:call")
    yield

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    sitecustomize.set_key(f"{len(_tests) - 1}:teardown")
    yield

def pytest_runtest_logreport(report):
    t = _tests[-1]
    t["seconds"] += report.duration
    if report.outcome == "failed" or (report.outcome == "skipped" and t["outcome"] == "passed"):
        t["outcome"] = report.outcome

def pytest_sessionfinish(session):
    with open(os.path.join(os.environ["MUTATE_TRACE_DIR"], "tests.json"), "w") as f:
        json.dump(_tests, f)
'''


def pytest_cmd(args: list[str], python: str = sys.executable) -> list[str]:
    return [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-seed=0", *args]


def vllm_tests(path: str) -> list[str]:
    """The vLLM tests (node ids) that check a source file, in VLLM_TESTS order; [] for a file they do not."""
    out: list[str] = []
    for pattern, nodeids in VLLM_TESTS.items():
        if fnmatch.fnmatch(path, pattern):
            out += [n for n in nodeids if n not in out]
    return out


def base_env(tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    for key in [k for k in env if k.startswith("MUTATE_TRACE")]:
        del env[key]
    return env


class Runner:
    """Runs commands in their own process groups; `stop()` kills them all (Ctrl-C)."""

    def __init__(self):
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def run(self, cmd, cwd, env, timeout) -> tuple[int | None, str, float]:
        t0 = time.monotonic()
        with tempfile.TemporaryFile() as log:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            with self.lock:
                self.procs.add(proc)
            if self.stopping:
                self._kill(proc)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                rc = None
            finally:
                self._kill(proc)
                with self.lock:
                    self.procs.discard(proc)
            log.seek(0)
            text = log.read().decode(errors="replace")
        return rc, text, time.monotonic() - t0

    @staticmethod
    def _kill(proc) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()

    def stop(self) -> None:
        self.stopping = True
        with self.lock:
            for proc in list(self.procs):
                self._kill(proc)


def baseline(root: Path, tree: Path, files: list[str], out: Path, runner: Runner, reuse: bool) -> dict:
    """Run the default suite once on the unmutated copy with line tracing; refuse to go on if anything fails."""
    cache = out / "baseline.json"
    digest = tree_hash(root, files)
    if reuse and cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("tree") == digest:
            print(f"[mutate] baseline: reusing {cache} (same tree {digest})", flush=True)
            return data
    trace_dir = Path(tempfile.mkdtemp(prefix="vqrl-mutate-trace-"))
    try:
        hook = trace_dir / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(TRACER)
        (hook / "mutate_baseline_plugin.py").write_text(PLUGIN)
        env = base_env(tree)
        env.update(PYTHONPATH=f"{tree / 'src'}{os.pathsep}{hook}", MUTATE_TRACE_DIR=str(trace_dir),
                   MUTATE_TRACE_SRC=str(tree / "src" / "vqrl") + os.sep, MUTATE_TRACE_ROOT=str(tree))
        print("[mutate] baseline: the default suite on the unmutated tree, with line tracing ...", flush=True)
        rc, text, seconds = runner.run(pytest_cmd(["-p", "mutate_baseline_plugin"]), tree, env, timeout=3600)
        if runner.stopping:
            raise KeyboardInterrupt
        tests_file = trace_dir / "tests.json"
        tests = json.loads(tests_file.read_text()) if tests_file.is_file() else []
        failed = [t["nodeid"] for t in tests if t["outcome"] == "failed"]
        if rc != 0 or failed or not tests:
            print(text[-6000:])
            raise SystemExit(f"mutate: the unmutated suite does not pass (exit {rc}; failed: {failed}): fix it first")
        lines: dict[str, dict[str, set]] = {}  # "path:line" -> {"call": test indices, "setup": ...}
        for cov in trace_dir.glob("cov-*.json"):
            for key, per_file in json.loads(cov.read_text()).items():
                if ":" not in key:
                    continue
                index, phase = key.split(":")
                phase = "setup" if phase == "setup" else "call"
                for path, numbers in per_file.items():
                    for n in numbers:
                        lines.setdefault(f"{path}:{n}", {"call": set(), "setup": set()})[phase].add(int(index))
        data = {"tree": digest, "seconds": round(seconds, 1), "tests": tests,
                "lines": {k: {p: sorted(v) for p, v in d.items()} for k, d in lines.items()}}
        out.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(data))
        print(f"[mutate] baseline: {len(tests)} tests passed in {seconds:.0f} s", flush=True)
        return data
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)


def mapped_files(root: Path, path: str) -> set[str]:
    """Test files for a source file: TEST_MAP's globs, plus any test file naming its dotted module."""
    tests = sorted((root / "tests").glob("test_*.py"))
    out = set()
    for prefix, globs in TEST_MAP.items():
        if path.startswith(prefix):
            out |= {f"tests/{t.name}" for t in tests for g in globs if fnmatch.fnmatch(t.name, g)}
    dotted = path[len("src/"):-len(".py")].replace("/", ".")
    parent, _, leaf = dotted.rpartition(".")
    pattern = re.compile(rf"\b{re.escape(dotted)}\b|from {re.escape(parent)} import [^\n]*\b{re.escape(leaf)}\b")
    out |= {f"tests/{t.name}" for t in tests if pattern.search(t.read_text())}
    return out


def select_tests(m: Mutant, base: dict, root: Path) -> tuple[list[str], str]:
    """The baseline tests to run against a mutant, and how they were chosen: first the tests that executed its
    line (or whose file's fixtures did), fastest first; then the rest of their files and of the files mapped to
    its module, fastest first. A test can depend on a line without executing it: a model or file built once by
    an earlier test and cached, or code that runs at import time; the second group covers those. With -x, a mutant
    is usually killed within the first group; a survivor has run them all."""
    tests = base["tests"]
    covering: set[int] = set()
    setup_files: set[str] = set()
    for n in range(m.line, m.end_line + 1):
        hit = base["lines"].get(f"{m.path}:{n}")
        if hit:
            covering |= set(hit["call"])
            setup_files |= {tests[i]["file"] for i in hit["setup"]}  # fixtures serve the whole file
    covering |= {i for i, t in enumerate(tests) if t["file"] in setup_files}
    files = {tests[i]["file"] for i in covering} | mapped_files(root, m.path)
    rest = {i for i, t in enumerate(tests) if t["file"] in files} - covering
    how = "module-level" if m.module_level else "covered" if covering else "not covered"

    def fastest(group):
        return sorted((i for i in group if tests[i]["outcome"] == "passed"), key=lambda i: (tests[i]["seconds"], i))

    return [tests[i]["nodeid"] for i in fastest(covering) + fastest(rest)], how


# ------------------------------------------------------------------------------------------------------ run
def run_mutant(m: Mutant, tree: Path, nodeids: list[str], timeout: float, runner: Runner, stop: bool = True,
               python: str = sys.executable, env: dict | None = None, options: tuple[str, ...] = ()) -> dict:
    """Run the tests against the mutant; the file is restored whatever happens. A mutant can make tests vanish (an
    empty parametrization): the plain suite would not notice that, so those are dropped and the rest run again.
    `python`, `env` (added to the usual environment) and pytest `options` run them elsewhere: the vLLM tests in
    .venv-vllm, with `-m vllm` (the default options deselect them)."""
    target = tree / m.path
    original = target.read_bytes()
    vanished: list[str] = []
    seconds = 0.0
    try:
        target.write_bytes(m.apply(original))
        for _ in range(2):
            rc, text, took = runner.run(pytest_cmd([*options, *(["-x"] if stop else []), *nodeids], python), tree,
                                        {**base_env(tree), **(env or {})}, timeout)
            seconds += took
            missing = [line.split("not found: ", 1)[1].strip() for line in text.splitlines()
                       if line.startswith("ERROR: not found: ")]
            missing = [os.path.relpath(x, tree) if os.path.isabs(x.split("::")[0]) else x for x in missing]
            gone = [n for n in nodeids if any(n == x or n.startswith(x + "[") for x in missing)]
            if rc != 4 or not gone:
                break
            vanished += gone
            nodeids = [n for n in nodeids if n not in gone]
            if not nodeids:
                rc, text = 0, text + "\n[mutate] every selected test vanished under the mutant"
                break
    finally:
        target.write_bytes(original)
    if runner.stopping:
        status = "interrupted"
    elif rc is None:
        status = "timeout"
    elif rc == 0:
        status = "survived"
    elif rc in (1, 2, 3):
        status = "killed"
    else:  # 4: usage error, 5: nothing collected
        status = "error"
    failed = [line.split(" ", 1)[1].split(" - ")[0] for line in text.splitlines()
              if line.startswith(("FAILED ", "ERROR ")) and not line.startswith("ERROR: ")]
    killer = ", ".join(failed) if failed else ("collection/import error" if status == "killed" and rc == 2 else None)
    return {"status": status, "seconds": round(seconds, 1), "killed_by": killer, "rc": rc, "vanished": vanished,
            "log_tail": text[-2500:] if status in ("error", "survived") else ""}


def with_vllm_tests(m: Mutant, tree: Path, res: dict, how: str, extra: list[str], vllm_python: str | None,
                    runner: Runner, stop: bool = True) -> tuple[dict, str]:
    """A survivor of the default suite whose module the vLLM tests check: with --vllm (`vllm_python` set) those
    tests run against it in the vLLM venv; without, the report says they were not run. Other results stand."""
    if res["status"] != "survived" or not extra:
        return res, how
    if vllm_python is None:
        return res, f"{how}; its vLLM tests not run (--vllm)"
    more = run_mutant(m, tree, extra, VLLM_TIMEOUT, runner, stop=stop, python=vllm_python, env=VLLM_ENV,
                      options=("-m", "vllm"))
    more["seconds"] = round(res["seconds"] + more["seconds"], 1)
    return more, f"{how}; vLLM tests run"


def sample(mutants: list[Mutant], sources: dict[str, bytes], seed: int, k: int) -> list[Mutant]:
    order = random.Random(seed).sample(mutants, len(mutants))
    chosen = []
    for m in order:
        if len(chosen) >= k:
            break
        if valid(m, sources[m.path]):
            chosen.append(m)
    return sorted(chosen, key=lambda m: (m.path, m.start, m.op))


def write_report(out: Path, meta: dict, results: list[dict]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    counted = [r for r in results if r["status"] in ("killed", "timeout", "survived")]
    caught = [r for r in counted if r["status"] in ("killed", "timeout")]
    score = 100.0 * len(caught) / len(counted) if counted else 0.0
    by_status = collections.Counter(r["status"] for r in results)
    meta = {**meta, "score": round(score, 1), "counts": dict(sorted(by_status.items()))}
    (out / "report.json").write_text(json.dumps({"meta": meta, "mutants": results}, indent=1))

    per_file = collections.defaultdict(collections.Counter)
    for r in results:
        per_file[r["path"]][r["status"]] += 1
    md = [f"# Mutation report (seed {meta['seed']}, {len(results)} mutants)", "",
          f"Score: **{score:.1f} %** ({len(caught)} of {len(counted)} killed or timed out; "
          + ", ".join(f"{v} {k}" for k, v in sorted(by_status.items())) + f"); {meta['seconds']:.0f} s.", "",
          "| file | killed | timeout | survived | equivalent | other |", "|---|---|---|---|---|---|"]
    for path in sorted(per_file):
        c = per_file[path]
        other = sum(v for k, v in c.items() if k not in ("killed", "timeout", "survived", "equivalent"))
        md.append(f"| {path} | {c['killed']} | {c['timeout']} | {c['survived']} | {c['equivalent']} | {other} |")
    for title, status in (("Survivors", "survived"), ("Timeouts", "timeout"), ("Errors", "error"),
                          ("Equivalent (tests/mutation_equivalent.txt)", "equivalent")):
        rows = [r for r in results if r["status"] == status]
        if not rows:
            continue
        md += ["", f"## {title}", ""]
        for r in rows:
            why = f" — {r['reason']}" if r.get("reason") else f" ({len(r.get('tests', []))} tests, {r['how']})"
            if r.get("vanished"):
                why += f"; {len(r['vanished'])} tests vanished under it (an empty parametrization)"
            md.append(f"- `{r['id']}`{why}")
            md += [f"  `{line}`" for line in r["diff"].splitlines()[:6]]
    if meta.get("stale_equivalents"):
        md += ["", "## Stale entries in the equivalence list (their line changed or is gone; ignored)", ""]
        md += [f"- `{s}`" for s in meta["stale_equivalents"]]
    if meta.get("moved_equivalents"):
        md += ["", "## Moved entries in the equivalence list (applied; update their line numbers)", ""]
        md += [f"- `{old}` is now `{new}`" for old, new in meta["moved_equivalents"]]
    md += ["", "## Killed", ""] + [f"- `{r['id']}` by `{r['killed_by']}` ({r['seconds']} s)"
                                    for r in results if r["status"] == "killed"]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return out / "report.json", out / "report.md"


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modules", nargs="+", default=None,
                   help=f"parts of src/vqrl to mutate (folders or files), default: {' '.join(DEFAULT_MODULES)} "
                        "(with --mutant: the files of the ids given)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-mutants", type=int, default=80)
    p.add_argument("--mutant", nargs="+", default=None, help="run these mutant ids (see --list) instead of a sample")
    p.add_argument("--operators", nargs="+", choices=OPERATORS, default=None, help="only these operator families")
    p.add_argument("--jobs", type=int, default=1, help="mutants run in parallel (one tree copy each)")
    p.add_argument("--timeout-factor", type=float, default=3.0,
                   help="a mutant times out after factor x the traced baseline time of its tests + 60 s")
    p.add_argument("--equivalent", default=EQUIVALENT_FILE)
    p.add_argument("--out", default="outputs/mutate")
    p.add_argument("--fresh-baseline", action="store_true", help="do not reuse a cached baseline of the same tree")
    p.add_argument("--tests", nargs="+", default=None,
                   help="only run selected tests whose node id starts with one of these (e.g. tests/test_x.py)")
    p.add_argument("--only-tests", nargs="+", default=None,
                   help="run exactly these pytest targets (files or node ids) against each mutant, with no baseline "
                        "run: a quick check that a new test kills a mutant (e.g. --mutant ID --only-tests "
                        "tests/test_x.py::test_y); a mutant times out after 900 s")
    p.add_argument("--no-stop", action="store_true",
                   help="run every selected test (not -x): killed_by lists all the tests that fail")
    p.add_argument("--vllm", action="store_true",
                   help="also run the vLLM tests (tests/test_vllm.py, in .venv-vllm on the CPU) for mutants of the "
                        "vLLM modules the default suite lets through; each engine start costs 35-50 s")
    p.add_argument("--vllm-python", default=VLLM_PYTHON, help="the Python of the vLLM venv (with --vllm)")
    p.add_argument("--list", action="store_true", help="list the candidate mutants and exit")
    args = p.parse_args(argv)
    if args.only_tests and (args.tests or args.vllm or args.fresh_baseline):
        p.error("--only-tests runs exactly the tests it names, without a baseline: not with --tests, --vllm or "
                "--fresh-baseline")
    vllm_python = str((ROOT / args.vllm_python).absolute()) if args.vllm else None
    if vllm_python and not os.access(vllm_python, os.X_OK):
        raise SystemExit(f"mutate: --vllm needs the vLLM venv's Python at {vllm_python} (make test-vllm builds it)")

    if args.modules is None:
        args.modules = sorted({i.split(":")[0].split("src/vqrl/", 1)[-1] for i in args.mutant}) if args.mutant \
            else list(DEFAULT_MODULES)
    everything = find_mutants(ROOT, args.modules)
    mutants = [m for m in everything if not args.operators or m.family in args.operators]
    sources = {path: (ROOT / path).read_bytes() for path in {m.path for m in mutants}}
    if args.list:
        for m in mutants:
            print(f"{m.id}\t{m.code}")
        per = collections.Counter(m.family for m in mutants)
        print(f"{len(mutants)} candidates: " + ", ".join(f"{k} {v}" for k, v in per.most_common()), file=sys.stderr)
        return 0
    if args.mutant:
        by_id = {m.id: m for m in mutants}
        missing = [i for i in args.mutant if i not in by_id]
        if missing:
            raise SystemExit(f"mutate: unknown mutant ids {missing} (see --list)")
        chosen = [by_id[i] for i in args.mutant]
    else:
        chosen = sample(mutants, sources, args.seed, args.max_mutants)
    equivalents, moved, stale = resolve_equivalents(read_equivalents(ROOT / args.equivalent), everything)
    for old, new in moved:
        print(f"[mutate] equivalence entry {old} is now {new}: update {args.equivalent}", file=sys.stderr)
    for s in stale:
        print(f"[mutate] stale equivalence entry (its line changed or is gone), ignored: {s}", file=sys.stderr)

    out = (ROOT / args.out).resolve()
    files = tree_files(ROOT)
    runner = Runner()
    copies: list[Path] = []
    results: list[dict] = []
    started = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for _ in range(max(1, args.jobs)):
            copies.append(Path(tempfile.mkdtemp(prefix="vqrl-mutate-")))
            copy_tree(ROOT, files, copies[-1])
        base = None if args.only_tests else \
            baseline(ROOT, copies[0], files, out, runner, reuse=not args.fresh_baseline)
        free: queue.Queue[Path] = queue.Queue()
        for c in copies:
            free.put(c)

        def one(k: int, m: Mutant) -> dict:
            row = {"id": m.id, "path": m.path, "line": m.line, "operator": m.op, "code": m.code,
                   "diff": diff(m, sources[m.path])}
            if m.id in equivalents:
                return {**row, "status": "equivalent", "reason": equivalents[m.id]}
            if base is None:  # --only-tests
                nodeids, how, extra, timeout = list(args.only_tests), "tests given (--only-tests)", [], 900.0
            else:
                nodeids, how = select_tests(m, base, ROOT)
                extra = vllm_tests(m.path)
                if args.tests:
                    nodeids = [n for n in nodeids if n.startswith(tuple(args.tests))]
                    extra = [n for n in extra if n.startswith(tuple(args.tests))]
                seconds = {t["nodeid"]: t["seconds"] for t in base["tests"]}
                timeout = args.timeout_factor * sum(seconds[n] for n in nodeids) + 60
            tree = free.get()
            try:
                if runner.stopping:
                    return {**row, "status": "interrupted"}
                res = run_mutant(m, tree, nodeids, timeout, runner, stop=not args.no_stop) if nodeids else \
                    {"status": "survived", "seconds": 0.0, "killed_by": None, "rc": 0, "vanished": [], "log_tail": ""}
                if not nodeids:
                    how = "no test in the default suite"
                res, how = with_vllm_tests(m, tree, res, how, extra, vllm_python, runner, stop=not args.no_stop)
            finally:
                free.put(tree)
            print(f"[mutate] {k + 1}/{len(chosen)} {res['status']:<11} {m.id}  ({len(nodeids)} tests, "
                  f"{res['seconds']} s)", flush=True)
            return {**row, **res, "how": how, "tests": nodeids + (extra if "vLLM tests run" in how else [])}

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(one, k, m) for k, m in enumerate(chosen)]
            try:
                results = [f.result() for f in futures]
            except KeyboardInterrupt:
                runner.stop()
                for f in futures:
                    f.cancel()
                results = [f.result() for f in futures if f.done() and not f.cancelled() and f.exception() is None]
                raise
    except KeyboardInterrupt:
        print("[mutate] interrupted: killed the running tests; the partial report follows", file=sys.stderr)
        runner.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
        for c in copies:
            shutil.rmtree(c, ignore_errors=True)
    meta = {"seed": args.seed, "modules": args.modules, "max_mutants": args.max_mutants,
            "candidates": len(mutants), "seconds": round(time.monotonic() - started, 1), "stale_equivalents": stale,
            "moved_equivalents": moved}
    report_json, report_md = write_report(out, meta, results)
    print(f"[mutate] report: {report_md} and {report_json}")
    print((report_md.read_text().split("\n\n")[1]))
    return 130 if runner.stopping else 0


if __name__ == "__main__":
    sys.exit(main())
