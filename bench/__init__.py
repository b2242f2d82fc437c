"""Benchmarks: `make bench`. They print figures beside their goals; they never fail CI."""
