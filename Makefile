# The two commands of the README: `make demo` and `make test`. Each sets up .venv first
# (scripts/setup_env.sh: quick and a no-op when nothing changed).
PY := .venv/bin/python

.PHONY: setup demo test results results-cpu-short ablations
setup:
	bash scripts/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest -q tests

# results/embedded.md, .json and .png: teacher, pretrained student and its recipes over 5 seeds, and
# results/embedded_scratch.*: the slim student from scratch and every loss over 5 or 3 (tools/make_results.py).
results: setup
	$(PY) tools/make_results.py
	$(PY) tools/make_results.py --benchmark scratch

results-cpu-short: setup
	$(PY) tools/make_results.py --benchmark scratch --schedule cpu-short

# results/ablation_<study>.md: the option studies of tools/ablate.py (they reuse the table's runs).
ablations: setup
	$(PY) tools/ablate.py variance variance_pretrained --seeds 1 2 3 4 5
	$(PY) tools/ablate.py fitnet fgfi balance fast_teacher fast_teacher_nst
	$(PY) tools/ablate.py pretrained fgfi_pretrained card_pretrained combined_pretrained heads_pretrained clip_pretrained gap_pretrained nst_clip_pretrained
