# The two commands of the README: `make demo` and `make test`. Each sets up .venv first
# (scripts/setup_env.sh: quick and a no-op when nothing changed).
PY := .venv/bin/python

.PHONY: setup demo test results results-cpu-short
setup:
	bash scripts/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest -q tests

# results/embedded.md and .png: teacher, student and every recipe over 3 seeds (tools/make_results.py).
results: setup
	$(PY) tools/make_results.py

results-cpu-short: setup
	$(PY) tools/make_results.py --schedule cpu-short
