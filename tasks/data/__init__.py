"""Data in: readers, validation, quarantine, dedup, snapshots and the golden set (the ingest stage)."""
