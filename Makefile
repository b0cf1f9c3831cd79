# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv and install
# everything themselves. TORCH picks the PyTorch wheel: the default pin resolves quickly here; set
# TORCH=torch (or a CUDA index) to get the build that suits your machine.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: install
	$(BIN)/ted demo --output_dir ted-demo --overwrite_output_dir

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) ted-demo
