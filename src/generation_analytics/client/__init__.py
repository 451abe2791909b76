"""Python client for Generation Analytics: `AnalyticsClient` for every RPC, `EventRecorder` for producers.

Needs only grpcio and protobuf (`pip install generation-analytics`).
"""

from generation_analytics.client.client import AnalyticsClient, alert_rule_spec
from generation_analytics.client.errors import AnalyticsClientError
from generation_analytics.client.events import build_event
from generation_analytics.client.recorder import EventRecorder, RecorderStats

__all__ = [
    "AnalyticsClient",
    "AnalyticsClientError",
    "EventRecorder",
    "RecorderStats",
    "alert_rule_spec",
    "build_event",
]
