"""Test configuration: fixtures live in the fix_*.py modules."""

import os

# Set before any fixture module imports gRPC: the tests fork only to exec (pg_ctl, redis-server, the
# service's commands), and gRPC's fork handlers crashed such children (generation_analytics/command.py).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

pytest_plugins = [
    "tests.fix_services",
    "tests.fix_server",
    "tests.fix_pipeline",
    "tests.fix_replica",
    "tests.fix_redis_replica",
    "tests.fix_redis_cluster",
]
