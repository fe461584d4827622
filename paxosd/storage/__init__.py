"""Durable state on SQLite: promises, votes, the decided log and snapshots; and the backup
file format."""
