# Shortcuts for the scripts; the scripts are the source of truth (and what CI runs).
VENV ?= .venv

.PHONY: test demo kafka-start kafka-stop lint clean

test:
	./scripts/test

demo:
	./scripts/demo

kafka-start:
	./scripts/kafka start

kafka-stop:
	./scripts/kafka stop

lint:
	$(VENV)/bin/ruff check pipeline operators schemas tests scripts
	$(VENV)/bin/mypy

# Generated files only: .venv and the broker cache (~/.cache/recloop) stay.
clean:
	rm -rf var reports build dist .pytest_cache .mypy_cache .ruff_cache
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
