# The two commands of the README: `make demo` and `make test`. Each sets up .venv first
# (scripts/setup_env.sh: quick and a no-op when nothing changed).
PY := .venv/bin/python

.PHONY: setup demo test
setup:
	bash scripts/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest -q tests
