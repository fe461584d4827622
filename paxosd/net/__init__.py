"""The wire: the handshake, encrypted records and framing, and the peer and client channels."""
