"""The daemon: the only code that blocks.

It carries the core's output to the disk, the network and the state machine.
"""
