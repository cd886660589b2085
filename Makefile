# Two commands: `make demo` and `make test`. Each creates the virtualenv on first use.
PYTHON ?= python3.11
VENV   := .venv
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
SAMX   := $(VENV)/bin/samx
DEMO_DIR ?= demo-data
DEMO_N   ?= 240
DEMO_EPOCHS ?= 20

.PHONY: demo test venv bench clean chromium labelstudio orthanc

# Label Studio lives in a virtualenv of its own: it pins many packages that clash with ours.
LS_VERSION := 1.23.2
LS_VENV    := .venv-ls
LS_STAMP   := $(LS_VENV)/.installed-label-studio-$(LS_VERSION)

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

# The whole loop (backend/demo/pipeline.py): phantoms (or `make demo SAMX_DATA=/path/to/radiographs`) ->
# ingest -> DeepCluster -> simulated naming -> first sorter and detector -> worker, ML backend,
# web app and Label Studio until Ctrl-C. A second run reuses everything.
demo: $(STAMP) $(LS_STAMP)
	@$(SAMX) --data-dir $(DEMO_DIR) demo --n $(DEMO_N) --cluster-epochs $(DEMO_EPOCHS)

# `samx labelstudio up` starts $(LS_VENV)/bin/label-studio (or SAMX_LABEL_STUDIO_BIN).
labelstudio: $(LS_STAMP)

$(LS_STAMP):
	@test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --quiet --disable-pip-version-check 'label-studio==$(LS_VERSION)'
	@rm -f $(LS_VENV)/.installed-*
	@touch $(LS_STAMP)

# lint-imports: the layer and no-cycle contracts in pyproject.toml ([tool.importlinter]).
test: $(STAMP) chromium orthanc $(LS_STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m pytest -q -rs $(PYTEST_ARGS)

# The browser tests drive Debian's headless chromium; install it once if it is missing.
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	    echo "installing Debian's chromium + chromium-driver for the browser tests"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null || \
	    { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null; } || \
	    echo "could not install chromium: the browser tests will be skipped (they fail under CI)"; }

# The PACS tests and bench/pacs.py run Debian's Orthanc with its DICOMweb plugin; install them once if missing.
orthanc:
	@test -x /usr/sbin/Orthanc && test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so || { \
	    echo "installing Debian's orthanc + orthanc-dicomweb for the PACS tests"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get install -y -q orthanc orthanc-dicomweb >/dev/null || \
	    { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q orthanc orthanc-dicomweb >/dev/null; } || \
	    echo "could not install orthanc: the PACS tests will be skipped (they fail under CI)"; }

bench: $(STAMP)
	for b in bench/*.py; do $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
