"""Benchmarks (`make bench`), each a script run by path; the package holds what they share."""
