"""Benchmarks: `make bench` runs all, `make bench-NAME` one; each writes out/bench/NAME.json and prints figures."""
