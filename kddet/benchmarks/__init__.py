"""The benchmark harness: multi-seed result tables and ablation studies on the embedded data set.

- ``schedule``: how long a run trains (a share of its config's schedule, warm-ups kept);
- ``recipes``: the two benchmarks, their recipes and how many seeds each trains;
- ``cache``: a run's cache keys and its record, shared by every table under one lock;
- ``runner``: trains runs through tools/train_net.py, several at a time, reusing finished ones;
- ``stats``: means over seeds, Welch's t-test against the baseline, Holm's correction;
- ``report``: the markdown tables and the chart;
- ``studies``: the ablation studies, as data;
- ``results`` and ``ablate``: the command lines (``python -m kddet.benchmarks.results``, ``.ablate``).
"""
