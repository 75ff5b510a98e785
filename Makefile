# The two commands of the README: `make demo` and `make test`. Each sets up .venv first
# (scripts/setup_env.sh: quick and a no-op when nothing changed).
PY := .venv/bin/python

.PHONY: setup demo lint test results results-cpu-short ablations
setup:
	bash scripts/setup_env.sh

demo: setup
	$(PY) tools/demo.py

# ruff (pyproject.toml): the lint rules, then the formatting, over the whole tree.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Two pytest workers, one file each at a time (a file's module fixtures stay in one worker), one
# thread each (tests/conftest.py); the ten slowest tests are listed at the end.
test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=10 tests

# results/embedded.md, .json and .png: teacher, pretrained student and its recipes over 10 (student), 5 or 3
# seeds; results/embedded_wide.*: the headline recipe and its student, 10 seeds each; and
# results/embedded_scratch.*: the slim student from scratch, every loss and the pretrained recipes as
# shipped (kddet/benchmarks/).
results: setup
	$(PY) -m kddet.benchmarks.results
	$(PY) -m kddet.benchmarks.results --benchmark wide
	$(PY) -m kddet.benchmarks.results --benchmark scratch

results-cpu-short: setup
	$(PY) -m kddet.benchmarks.results --benchmark scratch --schedule cpu-short

# results/ablations/<study>.md and .json: every option study of kddet/benchmarks/studies.py, each with its
# own seeds (they reuse the tables' runs).
ablations: setup
	$(PY) -m kddet.benchmarks.ablate all
