# `make demo` (the main job) and `make test`; both install what is missing first.
# `make server`: the MONAI Label server (its own venv, built once); `make test-server`: its tests.
PYTHON ?= python3
STAMP := .install-stamp
SERVER_VENV := .server-venv
SERVER_STAMP := $(SERVER_VENV)/.napari-msa-stamp
SAMPLE_STUDIES := .server-studies
STUDIES ?= $(SAMPLE_STUDIES)
PORT ?= 8000
CONF ?=

.PHONY: install demo test lint bench server server-venv test-server

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

$(SERVER_STAMP): server/requirements.txt server/pydicom_compat.py setup.py scripts/server_install.sh
	PYTHON=$(PYTHON) SERVER_VENV=$(SERVER_VENV) bash scripts/server_install.sh
	touch $(SERVER_STAMP)

server-venv: $(SERVER_STAMP)

# In the foreground on 127.0.0.1:$(PORT); STUDIES=folder (default: the samples as NIfTI); CONF="--conf model demo"
server: $(SERVER_STAMP)
	@if [ "$(STUDIES)" = "$(SAMPLE_STUDIES)" ]; then $(SERVER_VENV)/bin/python server/export_samples.py $(STUDIES) >/dev/null; fi
	$(SERVER_VENV)/bin/python -m monailabel.main start_server --app server --studies "$(STUDIES)" \
		--host 127.0.0.1 --port $(PORT) $(CONF)

test-server: $(STAMP) $(SERVER_STAMP)
	$(PYTHON) -m pytest -ra server/tests
