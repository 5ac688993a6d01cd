"""The benchmarks, run as scripts (``python benchmarks/bench_tap.py --quick``); each writes
its JSON to ``benchmarks/results/``. Nothing in farecore, readers or sim imports them.
"""
