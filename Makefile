# `make demo` (the main job) and `make test`; both install what is missing first.
PYTHON ?= python3
STAMP := .install-stamp

.PHONY: install demo test lint bench

$(STAMP): setup.py scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	napari-msa demo

test: $(STAMP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -ra

bench: $(STAMP)
	$(PYTHON) benchmarks/bench_engine.py
