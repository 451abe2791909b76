"""Stream shards on a real Redis Cluster (three masters, three replicas): events spread over the shards by
event_id, every shard on its own master, each event stored exactly once whatever the retries; dead letters
stay in their shard's slot; status reports every shard; a master killed under load is replaced by its
replica and recording carries on with nothing acknowledged lost."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import replace
from typing import Any, cast

import grpc
import psycopg
import pytest
import redis
from hypothesis import given
from hypothesis import settings as settings_profile
from hypothesis import strategies as st
from redis.crc import key_slot

from generation_analytics.service.ingest.cluster_link import ClusterLink
from generation_analytics.service.settings import Settings
from generation_analytics.service.stream import EVENT_FIELD, StreamKeys
from generation_analytics.v1 import events_pb2, pipeline_pb2
from tests.factories import make_event
from tests.fix_redis_cluster import LocalRedisCluster, on_cluster
from tests.fix_redis_replica import Producer
from tests.fix_server import LiveServer

pytestmark = pytest.mark.faults


def stored_ids(dsn: str) -> Counter[str]:
    with psycopg.connect(dsn) as conn:
        return Counter(str(row[0]) for row in conn.execute("SELECT event_id FROM generation_events"))


def drain(server: LiveServer) -> pipeline_pb2.RunTransferResponse:
    """Run transfer until nothing is left; the first runs after a failover may meet the cluster settling."""
    deadline = time.monotonic() + 60
    while True:
        try:
            report = server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest())
            if report.remaining == 0:
                return report
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        assert time.monotonic() < deadline, "transfer never drained the cluster"
        time.sleep(0.2)


def test_shards_spread_over_the_masters_and_every_event_is_stored_once(
    cluster_settings: Settings, redis_cluster: LocalRedisCluster
) -> None:
    keys = StreamKeys.of(cluster_settings.redis)
    assert len({redis_cluster.master_port_of(shard.stream) for shard in keys.shards}) == 3
    server = LiveServer(cluster_settings)
    try:
        singles = [make_event() for _ in range(60)]
        batch = [make_event() for _ in range(400)]
        for event in singles:
            server.events.RecordEvent(events_pb2.RecordEventRequest(event=event))
        reply = server.events.RecordEvents(events_pb2.RecordEventsRequest(events=batch))
        assert reply.accepted_count == len(batch)
        # Retries: a single event and part of the batch again, after and before transfer.
        server.events.RecordEvent(events_pb2.RecordEventRequest(event=singles[0]))
        server.events.RecordEvents(events_pb2.RecordEventsRequest(events=batch[:100]))

        status = server.pipeline.GetPipelineStatus(pipeline_pb2.GetPipelineStatusRequest())
        assert [s.key for s in status.stream_shards] == [shard.stream for shard in keys.shards]
        assert all(s.undelivered_entries > 0 for s in status.stream_shards), "an event_id hash left a shard empty"
        assert sum(s.undelivered_entries for s in status.stream_shards) == status.undelivered_entries == 561

        report = drain(server)
        server.events.RecordEvents(events_pb2.RecordEventsRequest(events=batch[100:150]))
        report2 = drain(server)
        assert report.inserted + report2.inserted == 460
        assert report.duplicates + report2.duplicates == 151
        stored = stored_ids(cluster_settings.postgres.dsn)
        assert stored == Counter({e.event_id: 1 for e in singles + batch})
        status = server.pipeline.GetPipelineStatus(pipeline_pb2.GetPipelineStatusRequest())
        assert status.pending_entries == status.undelivered_entries == 0
        assert status.total_events == 460
    finally:
        server.close()


def test_an_events_shard_follows_its_event_id_whichever_server_takes_it(
    cluster_settings: Settings, redis_cluster: LocalRedisCluster
) -> None:
    keys = StreamKeys.of(cluster_settings.redis)
    servers = [LiveServer(cluster_settings), LiveServer(cluster_settings)]
    try:
        events = [make_event() for _ in range(30)]
        for server in servers:
            for event in events:
                server.events.RecordEvent(events_pb2.RecordEventRequest(event=event))
        client = redis_cluster.client()
        for shard in keys.shards:
            entries: Any = client.xrange(shard.stream)
            ids = Counter(events_pb2.GenerationEvent.FromString(fields[EVENT_FIELD]).event_id for _, fields in entries)
            assert all(keys.shard_for(event_id) == shard for event_id in ids)
            assert set(ids.values()) <= {2}, "an event's two copies went to different shards"
        client.close()
        assert drain(servers[0]).duplicates == 30
        assert stored_ids(cluster_settings.postgres.dsn) == Counter({e.event_id: 1 for e in events})
    finally:
        for server in servers:
            server.close()


def test_poison_entries_are_dead_lettered_in_their_own_shard(
    cluster_settings: Settings, redis_cluster: LocalRedisCluster
) -> None:
    keys = StreamKeys.of(cluster_settings.redis)
    server = LiveServer(cluster_settings)
    try:
        good = [make_event() for _ in range(20)]
        server.events.RecordEvents(events_pb2.RecordEventsRequest(events=good))
        client = redis_cluster.client()
        for shard in keys.shards:
            client.xadd(shard.stream, {EVENT_FIELD: b"not a protobuf " + str(shard.index).encode()})
        report = drain(server)
        assert (report.inserted, report.dead_lettered) == (20, 3)
        for shard in keys.shards:
            (entry,) = cast(Any, client.xrange(shard.dead_letter))
            assert entry[1][b"payload"] == b"not a protobuf " + str(shard.index).encode()
        client.close()
        status = server.pipeline.GetPipelineStatus(pipeline_pb2.GetPipelineStatusRequest())
        assert status.dead_letter_count == 3
        assert [s.dead_letter_count for s in status.stream_shards] == [1, 1, 1]
    finally:
        server.close()


@pytest.mark.slow
def test_a_master_killed_under_load_is_replaced_and_nothing_acknowledged_is_lost(
    settings: Settings, private_redis_cluster: LocalRedisCluster
) -> None:
    cluster = private_redis_cluster
    replicated = on_cluster(settings, cluster, wait_replicas=1, wait_timeout_ms=300)
    server = LiveServer(replicated)
    try:
        producers = [Producer(server) for _ in range(3)]
        time.sleep(1.0)
        victim = cluster.master_port_of(StreamKeys.of(replicated.redis).shards[0].stream)
        for producer in producers:
            producer.phase = "failing over"
        cluster.kill(victim)
        cluster.wait_healthy(masters=3, replicas=2)
        # Its replica took over and has no replica of its own: with WAIT 1 its shard refuses events (they
        # could not survive another loss) until the old master is back, as that master's replica.
        cluster.start_node(victim)
        cluster.wait_healthy(masters=3, replicas=3)
        for producer in producers:
            producer.phase = "after"
        time.sleep(1.5)
        for producer in producers:
            producer.stop()
        acked = {event_id: phase for producer in producers for event_id, phase in producer.acked.items()}
        assert any(phase == "after" for phase in acked.values()), "recording did not resume after the failover"
        assert sum(producer.refusals for producer in producers) > 0, "the killed master was never in the way"
        drain(server)
        stored = stored_ids(replicated.postgres.dsn)
        lost = [event_id for event_id in acked if event_id not in stored]
        assert not lost, f"{len(lost)} of {len(acked)} acknowledged events lost"
        assert max(stored.values()) == 1
    finally:
        server.close()


def test_settings_refuse_a_cluster_without_an_address_and_braces_in_a_sharded_namespace() -> None:
    from generation_analytics.service.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="GA_REDIS_CLUSTER"):
        load_settings({"GA_REDIS_CLUSTER": "true"})
    with pytest.raises(SettingsError, match="GA_NAMESPACE"):
        load_settings({"GA_REDIS_STREAM_SHARDS": "2", "GA_NAMESPACE": "a{b}"})
    with pytest.raises(SettingsError, match="GA_REDIS_STREAM_SHARDS"):
        load_settings({"GA_REDIS_STREAM_SHARDS": "0"})
    assert replace(load_settings({"GA_REDIS_STREAM_SHARDS": "4"}).redis).stream_shards == 4


@settings_profile(max_examples=60, deadline=None)
@given(
    namespace=st.text(st.sampled_from("abcxyz_:-.0123456789"), min_size=1, max_size=20),
    shard_count=st.integers(1, 64),
    cluster=st.booleans(),
    event_ids=st.lists(st.uuids().map(str), max_size=20),
)
def test_each_shards_keys_share_a_slot_and_shards_spread_over_the_slot_ranges(
    namespace: str, shard_count: int, cluster: bool, event_ids: list[str]
) -> None:
    keys = StreamKeys(namespace, shard_count, cluster)
    assert [shard.index for shard in keys.shards] == list(range(shard_count))
    if shard_count == 1 and not cluster:  # the names recorded before shards existed
        assert keys.shards[0].stream == f"{namespace}:generation_events:stream"
    for shard in keys.shards:
        slot = key_slot(shard.stream.encode())
        if shard_count > 1 or cluster:  # (one Redis holds every slot of the unsharded names)
            assert key_slot(shard.dead_letter.encode()) == slot, "dead-lettering and acknowledging span slots"
            assert slot * shard_count // 16384 == shard.index
        assert shard.stream.startswith(f"{namespace}:") and shard.dead_letter.startswith(f"{namespace}:")
    assert len({shard.stream for shard in keys.shards}) == shard_count
    again = StreamKeys(namespace, shard_count, cluster)  # another process: the same shard for each event_id
    assert [keys.shard_for(e) for e in event_ids] == [again.shard_for(e) for e in event_ids]


def test_shards_on_a_single_redis_share_the_events_and_status_reports_each(settings: Settings) -> None:
    sharded = replace(settings, redis=replace(settings.redis, stream_shards=4))
    server = LiveServer(sharded)
    try:
        events = [make_event() for _ in range(200)]
        server.events.RecordEvents(events_pb2.RecordEventsRequest(events=events))
        status = server.pipeline.GetPipelineStatus(pipeline_pb2.GetPipelineStatusRequest())
        expected = Counter(StreamKeys.of(sharded.redis).shard_for(e.event_id).index for e in events)
        assert {s.index: s.undelivered_entries for s in status.stream_shards} == dict(expected)
        assert drain(server).inserted == 200
        assert stored_ids(sharded.postgres.dsn) == Counter({e.event_id: 1 for e in events})
    finally:
        server.close()


def test_the_link_follows_a_slot_moved_to_another_master(
    private_redis_cluster: LocalRedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = private_redis_cluster
    caplog.set_level(logging.INFO, logger="generation_analytics.service.ingest.cluster_link")
    key = "ga_test_moved:{moved}"

    async def scenario() -> None:
        link = ClusterLink(cluster.url, timeout_s=2.0)
        try:
            assert await link.execute_for(key, "SET", key, "before") == b"OK"
            await link.execute_for(key, "DEL", key)  # the slot must be empty to be handed over
            owner = cluster.master_port_of(key)
            new_owner = next(port for port in cluster.live_ports() if port != owner and _is_master(port))
            new_id = redis.Redis(port=new_owner).execute_command("CLUSTER", "MYID")
            masters = [new_owner, *(p for p in cluster.live_ports() if p != new_owner and _is_master(p))]
            for port in masters:  # the link still believes in the old owner
                redis.Redis(port=port).execute_command("CLUSTER", "SETSLOT", key_slot(key.encode()), "NODE", new_id)
            assert await link.execute_for(key, "SET", key, "after") == b"OK"  # MOVED, refreshed, resent
            assert redis.Redis(port=new_owner).get(key) == b"after"
        finally:
            await link.close()

    asyncio.run(scenario())
    assert "moved (MOVED" in caplog.text, "the second SET did not meet the MOVED it was meant to"


def _is_master(port: int) -> bool:
    return bool(redis.Redis(port=port).execute_command("ROLE")[0] == b"master")


def test_a_new_shard_count_still_drains_what_earlier_counts_left(settings: Settings) -> None:
    """1 shard (the unsharded names), then 3, then 2: events recorded under each count and never transferred
    are all stored once by a transfer configured with the last count, and status counts them meanwhile."""
    recorded: list[events_pb2.GenerationEvent] = []
    streams: set[str] = set()
    for shards in (1, 3, 2):
        layout = replace(settings, redis=replace(settings.redis, stream_shards=shards))
        streams |= {shard.stream for shard in StreamKeys.of(layout.redis).shards}
        server = LiveServer(layout)
        try:  # recording registers the shards it writes to: no transfer of this count has to run
            events = [make_event() for _ in range(50)]
            server.events.RecordEvents(events_pb2.RecordEventsRequest(events=events))
            server.events.RecordEvents(events_pb2.RecordEventsRequest(events=events[:10]))  # retries
            recorded += events
        finally:
            server.close()
    server = LiveServer(layout)
    try:
        status = server.pipeline.GetPipelineStatus(pipeline_pb2.GetPipelineStatusRequest())
        assert status.undelivered_entries == 150 + 30
        assert {s.key for s in status.stream_shards} == streams
        current = {shard.stream: shard.index for shard in StreamKeys.of(layout.redis).shards}
        assert all(s.index == current.get(s.key, -1) for s in status.stream_shards)
        report = drain(server)
        assert (report.inserted, report.duplicates) == (150, 30)
        assert stored_ids(layout.postgres.dsn) == Counter({e.event_id: 1 for e in recorded})
    finally:
        server.close()
