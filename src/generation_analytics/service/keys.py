"""Redis key, stream and group names, all built from the namespace in one place."""

from __future__ import annotations

from dataclasses import dataclass

# Field of a stream entry that holds the serialized GenerationEvent (protobuf wire format).
EVENT_FIELD = b"e"
# Consumer group shared by every transfer worker of every replica.
TRANSFER_GROUP = "generation_analytics_transfer"


@dataclass(frozen=True)
class StreamKeys:
    """Names of the Redis objects one namespace uses."""

    namespace: str

    @property
    def stream(self) -> str:
        """Events accepted by capture and not yet acknowledged by transfer."""
        return f"{self.namespace}:generation_events:stream"

    @property
    def dead_letter(self) -> str:
        """Entries transfer could not store, with the reason (also copied to a Postgres table)."""
        return f"{self.namespace}:generation_events:dead"

    @property
    def pattern(self) -> str:
        """Matches every key of the namespace (used by tests to clean up)."""
        return f"{self.namespace}:*"
