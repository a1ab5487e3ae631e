# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# Everything installs into .venv from the pinned requirements.txt.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)
SHARED_WEIGHTS := ../shared/models/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5

# Offline weights: use the shared file when nobody chose another one.
ifeq ($(VITRINE_WEIGHTS),)
ifneq ($(wildcard $(SHARED_WEIGHTS)),)
export VITRINE_WEIGHTS := $(abspath $(SHARED_WEIGHTS))
endif
endif

.PHONY: install run server test lint bench bench-quick clean

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

run: install
	./scripts/run.sh

server: install
	$(PY) server.py

lint: install
	$(PY) -m ruff check .

test: install lint
	$(PY) -m pytest

bench: install
	$(PY) -m bench.run_all

bench-quick: install
	$(PY) -m bench.run_all --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
