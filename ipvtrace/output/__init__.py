"""Output: what ipvtrace writes and shows.

The recording format (frames, checked JSON schemas, owner-only files), the
terminal and JSON renderers, pcapng and the Prometheus export. Imports the
model.
"""
