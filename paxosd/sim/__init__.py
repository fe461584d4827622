"""Deterministic simulator: the real core and the daemon's runner over a simulated network, disk
(with unsynced writes that a power cut loses) and clock."""
