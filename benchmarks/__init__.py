"""ssl_core benchmark suite: each kernel beside its reference, same run, same threads.

Run ``python -m benchmarks --help`` from the repository root.
"""
