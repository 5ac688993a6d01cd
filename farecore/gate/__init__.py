"""A running gate: the reader port, one tap, the gate loop, the station controller, the
gate's configuration and its durable marks.

Above ``farecore.journal``; the ``farecore gate`` command wires it together.
"""
