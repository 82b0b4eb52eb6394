"""crdt-sync core: vector clocks, aggregates, entity policies, merge engine and services.

This package does no I/O of its own and imports no framework; storage and transport live in
`storage`, `protocol` and `web`, which depend on it (never the other way round).
"""

__version__ = "0.1.0"
