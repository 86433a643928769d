# `make test` and `make demo` work from a clean clone: they build .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Test modules run on this many workers, each module whole on one (its module fixtures run
# once), in conftest's order (the longest first): twice the cores, since much of the suite's
# time is spent waiting on train.py subprocesses and the GCS emulator (measured on 2 cores:
# 1.57 of them busy with 2 workers; the suite took 928 s with 3 workers, 883 s with 4).
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) * 2 )))

.PHONY: test demo bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of PyTorch (parity tests only) before the rest, so nothing pulls a CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

DEMO_DATA := runs/demo-data

demo: $(VENV)/.installed
	test -f $(DEMO_DATA)/stdlib.txt || $(PY) -m pipeline.corpus --output $(DEMO_DATA)/stdlib.txt
	test -f $(DEMO_DATA)/tokenizer/tokenizer.json || \
	  $(PY) -m pipeline.tokenizer_training --input $(DEMO_DATA)/stdlib.txt --output $(DEMO_DATA)/tokenizer --vocab_size 8000
	$(PY) train.py configs/demo.json

bench: $(VENV)/.installed
	for script in bench/*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) runs
