"""The sans-I/O multi-Paxos core: events in, effects out. No sockets, disk, clock or global
randomness; ``tests/core/test_purity.py`` enforces it."""
