"""paxosd: a persistent, replicated key-value store on multi-Paxos."""

__version__ = "0.1.0"
