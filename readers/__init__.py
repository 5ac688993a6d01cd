"""Reader adapters for farecore: thin shells that move APDUs between a device and the core.

Each adapter implements ``farecore.gate.reader_port.Reader`` and registers a factory under the
``farecore.readers`` entry-point group.
"""

__all__: list[str] = []
