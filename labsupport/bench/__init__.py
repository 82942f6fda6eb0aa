"""Benchmarks, one module per pattern, each with ``benchmark() -> dict``.

``make bench`` (``tests/bench.py``) runs them after timing every notebook. They are kept
out of the mechanism modules so that a learner reading a pattern reads only the pattern.
"""
