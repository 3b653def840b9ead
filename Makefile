# safegen: `make demo` to see it work, `make test` to check it. Both create .venv first.
#
# torch is installed before the package and pinned to the CPU wheel: a bare `torch` requirement would
# let pip pick a CUDA build (about 20 extra packages). Override with e.g. `make venv TORCH=torch==2.13.0+cu126`.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.safegen-installed

.PHONY: venv demo test lint

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/safegen generate "a red striped circle" "a blue dotted star" \
		--model mini --n 4 --seed 0 --out outputs/demo
	@echo "Demo images are in outputs/demo (generation.jsonl lists prompt and seed for each)."

# pytest exits 5 when it collects no tests: not a failure here.
test: venv
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q || test $$? -eq 5

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

