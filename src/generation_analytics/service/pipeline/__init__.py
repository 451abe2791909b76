"""The pipeline: transfer (stream -> Postgres), aggregation (rollups), retention, their schedule and the worker."""
