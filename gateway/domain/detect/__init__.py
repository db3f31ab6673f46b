"""Detectors: pure functions from (request, counters) to findings. No I/O."""
