"""Experiments of many runs: ``adact search`` / ``adact reproduce`` planned, run in worker processes and reported."""
