"""ftsup: the fault-tolerant training supervisor."""

__version__ = "0.1.0"
