"""Shared fixtures: tiny models are built once per test session (a few seconds each) and reused read-only."""

from __future__ import annotations

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen2.5-VL (the embedded default architecture)."""
    from vqrl.models.tiny import make_tiny_model

    return str(make_tiny_model("qwen2_5_vl", tmp_path_factory.mktemp("tiny") / "qwen2_5_vl"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Builder of tiny models by arch, cached for the session."""
    from vqrl.models.tiny import make_tiny_model

    cache = {}

    def get(arch: str, **kwargs) -> str:
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = str(make_tiny_model(arch, tmp_path_factory.mktemp(arch) / "model", **kwargs))
        return cache[key]

    return get


@pytest.fixture
def durability_log(monkeypatch):
    """Spies on a module's os.fsync and os.replace: returns `watch(module)`, whose list records, in order, the size of
    each file at its fsync and ("replace", name of the destination) at each rename (the real calls still run)."""
    import os

    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(os.fstat(fd).st_size)
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        return real_replace(src, dst)

    def watch(module):
        monkeypatch.setattr(module.os, "fsync", fsync)
        monkeypatch.setattr(module.os, "replace", replace)
        return events

    return watch


@pytest.fixture
def own_torch_rng():
    """For tests that seed torch's global generator: it is given back as it was, so no later test depends on them."""
    import torch

    with torch.random.fork_rng():
        yield
