# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv and install
# everything themselves. TORCH picks the PyTorch wheel: the default pin resolves quickly here; set
# TORCH=torch (or a CUDA index) to get the build that suits your machine.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# The oldest transformers that pyproject.toml accepts: `make test-min` runs a smoke subset against it.
MIN_TRANSFORMERS ?= transformers==5.6.0
MIN_VENV ?= .venv-min
SMOKE_TESTS ?= tests/test_cli_stages.py tests/test_training_math.py tests/test_stage1_cache.py tests/test_golden_parity.py

.PHONY: install demo test test-fast test-min lint format docs clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(BIN)/ted demo --output_dir ted-demo --overwrite_output_dir

test: install
	$(BIN)/python -m pytest -q

# The quick loop while developing: no slow test, nothing that needs ../shared.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not shared"

# The smoke venv sits on top of the main one: a .pth file puts $(VENV)'s packages after its own, so
# torch (several GB when pip picks a CUDA build) is installed once, and only the old transformers and
# whatever it pins differently land in $(MIN_VENV), where they come first.
$(MIN_VENV)/.installed: $(VENV)/.installed pyproject.toml
	$(PYTHON) -m venv $(MIN_VENV)
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_path('purelib'))" > \
		"$$($(MIN_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")/ted-main-venv.pth"
	$(MIN_VENV)/bin/python -m pip install --quiet -e ".[test]" "$(MIN_TRANSFORMERS)"
	touch $@

test-min: $(MIN_VENV)/.installed
	$(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider $(SMOKE_TESTS)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

# The documentation site (docs/ -> site/); warnings (a broken link or anchor) fail the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) $(MIN_VENV) ted-demo site
