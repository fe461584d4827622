"""The replicated state machine: the command vocabulary clients send, and the machine that
applies it."""
