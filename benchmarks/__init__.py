"""Benchmarks of rlft (not part of the installed package): vs_trl.py, sampler.py."""
