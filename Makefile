# The README's commands. Each target sets up .venv first (scripts/setup.sh, idempotent).
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: setup train test lint format

setup:
	bash scripts/setup.sh

# Train HAIL (two SASRec peers) on the built-in nyc16 data set and print the metrics table.
train: setup
	$(VENV)/bin/hail train --data nyc16 --model sasrec --peers 2 --epochs 2 --max-len 20 \
		--dim 32 --batch-size 256 --out runs/quickstart

test: setup
	$(VENV)/bin/python -m pytest python_tests $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check hail_ext python_tests benchmarks
	$(VENV)/bin/ruff format --check hail_ext python_tests benchmarks
	$(VENV)/bin/clang-format --dry-run --Werror $$(git ls-files 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' 'csrc/*.cuh')

format: setup
	$(VENV)/bin/ruff format hail_ext python_tests benchmarks
	$(VENV)/bin/clang-format -i $$(git ls-files 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' 'csrc/*.cuh')
