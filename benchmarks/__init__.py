"""sgllie's benchmark suite (pytest-benchmark); run with ``pytest benchmarks/`` (see README.md).

A package so its modules (``benchmarks.test_model``, ...) never clash with ``tests/test_model.py``
when both folders are collected in one session. Not installed: setup.py lists its packages.
"""
