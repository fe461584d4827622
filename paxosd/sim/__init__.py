"""Deterministic simulator: the real core over a simulated network, disk and clock."""
