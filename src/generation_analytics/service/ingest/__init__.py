"""Ingest: validate incoming events and append them to the Redis stream (the write path)."""
