# Set-up commands of the README. Each creates .venv if it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned here, not in pyproject.toml: an unpinned torch pulls a CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test install clean

$(BIN)/pairreg: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/pairreg

install: $(BIN)/pairreg

demo: install
	$(BIN)/pairreg train --preset rmd17-demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
