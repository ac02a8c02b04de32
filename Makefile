# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of PyTorch where one is on disk; set TORCH_SPEC="torch" (or a CUDA wheel) on a GPU box.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_out

.PHONY: venv demo test test-fast lint bench docs lock clean

# The image's lock (without its hashes) constrains the venv: the tests run what the image ships.
$(VENV)/.installed: pyproject.toml docker/requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	sed -e '/--hash=/d' -e 's/ *\\$$//' docker/requirements.lock > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m delta_loss_devtools.demo --out $(DEMO_OUT)

# The code must run on the oldest Python pyproject accepts (requires-python).
PY_FLOOR := $(shell sed -n 's/^requires-python = ">=\([0-9.]*\)"/\1/p' pyproject.toml)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/vermin --no-tips -q --eval-annotations --violations -t=$(PY_FLOOR)- \
		common scorer_svc trainer_svc delta_loss_devtools bench tests

test: lint
	$(PY) -m pytest -q --durations=25

# Unit and in-process tests only: no scorer or trainer process is started, no Docker tool used.
test-fast: lint
	$(PY) -m pytest -q -m "not slow and not docker" --durations=25

bench: venv
	$(PY) -m bench

# docs/CONFIGURATION.md's tables of settings and keys, from their descriptions in the code.
docs: venv
	$(PY) -m delta_loss_devtools.configuration_page

# The image's dependencies, pinned with their hashes, for the base image's Python (3.11) on
# x86_64 Linux; torch is the base image's (docker/base-image.txt). Needs the package index.
LOCK_PYTHON ?= 3.11
lock: venv
	$(VENV)/bin/uv pip compile pyproject.toml docker/build.in --extra postgres \
		--excludes docker/base-image.txt --python-version $(LOCK_PYTHON) \
		--python-platform x86_64-manylinux_2_28 --generate-hashes \
		--custom-compile-command "make lock" -o docker/requirements.lock

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
