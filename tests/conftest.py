"""Test configuration: fixtures live in the fix_*.py modules."""

pytest_plugins = [
    "tests.fix_services",
    "tests.fix_server",
    "tests.fix_pipeline",
    "tests.fix_replica",
    "tests.fix_redis_replica",
    "tests.fix_redis_cluster",
]
