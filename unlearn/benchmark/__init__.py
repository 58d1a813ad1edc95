"""Benchmark: a grid of poisons x defenses x models x seeds, and its report."""
