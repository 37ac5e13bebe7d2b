# The README's two commands: `make demo` (set up, run the main job) and `make test` (set up, run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
export HF_HUB_OFFLINE ?= 1
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup setup-dev demo test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

setup: $(BIN)/python
	$(PIP) install --quiet -c requirements/ci-constraints.txt torch torchvision
	$(PIP) install --quiet -c requirements/ci-constraints.txt -e .

setup-dev: $(BIN)/python
	$(PIP) install --quiet -c requirements/ci-constraints.txt torch torchvision
	$(PIP) install --quiet -c requirements/ci-constraints.txt -e '.[dev,ocr,text]'

demo: setup
	$(BIN)/align doctor tiny:sd3

test: setup-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup-dev
	$(BIN)/ruff check .
