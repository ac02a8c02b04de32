# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of PyTorch where one is on disk; set TORCH_SPEC="torch" (or a CUDA wheel) on a GPU box.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_out

.PHONY: venv demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m devtools.demo --out $(DEMO_OUT)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q --durations=10

bench: venv
	$(PY) -m bench

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
