"""Developer tooling: the local cluster, recovery drills and benchmarks.

The server never imports it.
"""
