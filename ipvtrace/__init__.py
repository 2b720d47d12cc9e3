"""ipvtrace: which branch did the Linux ipvlan driver take, packet by packet."""

__version__ = "0.1.0"
