"""The fleet: a city's gates kept current and watched.

The signed parameter package (``package``: what ``farecore publish`` makes and what a
gate follows), the collection point for the gates' journals and chain heads
(``collect``, ``upload``), and the gates' Prometheus metrics (``metrics``). This layer
sits above the gate and the settlement: a gate runs without it, and ``farecore gate``
wires it in when the configuration asks for it.
"""
