"""Data in: landing zone, readers, validation, quarantine, snapshots and the golden set (the ingest stage).

See docs/data.md.
"""
