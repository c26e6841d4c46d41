"""Benchmarks of mvc against its peers (design.md section 9); run with `make bench`."""
