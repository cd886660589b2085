# Two commands: `make demo` and `make test`. Each creates the virtualenv on first use.
PYTHON ?= python3.11
VENV   := .venv
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
SAMX   := $(VENV)/bin/samx
DEMO_DIR ?= demo-data
DEMO_N   ?= 240

.PHONY: demo test venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

# Phantoms (or your own folder: make demo SAMX_DATA=/path/to/radiographs) -> ingest -> summary.
demo: $(STAMP)
	@$(SAMX) --data-dir $(DEMO_DIR) init
	@if [ -n "$(SAMX_DATA)" ]; then \
	    $(SAMX) --data-dir $(DEMO_DIR) ingest "$(SAMX_DATA)" --report $(DEMO_DIR)/ingest-report.json; \
	else \
	    test -f $(DEMO_DIR)/phantoms/truth.json || $(SAMX) synth $(DEMO_DIR)/phantoms --n $(DEMO_N); \
	    $(SAMX) --data-dir $(DEMO_DIR) ingest $(DEMO_DIR)/phantoms/images --report $(DEMO_DIR)/ingest-report.json; \
	fi
	@$(SAMX) --data-dir $(DEMO_DIR) jobs --limit 3
	@echo "thumbnails: $(abspath $(DEMO_DIR))/thumbnails   log: $(abspath $(DEMO_DIR))/logs/samx.log"

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -rs $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/python bench/ingest.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
