"""The client side: connect, find the leader, retry exactly once, and the typed results.

``client`` (Client: one request at a time), ``pipeline`` (Pipeline: many in flight),
``routing`` (which member to ask: shared by both), ``connection`` (opening one), ``errors``.
"""
