# Two entry points on a fresh clone: `make demo` and `make test`. Both build .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test test-slow test-all lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the build that is available locally; the ranges in pyproject accept it.
	$(PY) -m pip install -q $(TORCH_PIN) || $(PY) -m pip install -q "torch>=2.4,<2.15" "torchvision>=0.19,<0.30"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m evaluation.demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) outputs
