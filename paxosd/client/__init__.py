"""The client side: connect, find the leader, retry exactly once, and the typed results."""
