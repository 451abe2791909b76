"""API keys, scopes, TLS and mTLS on a real server: every RPC and HTTP path against every kind of caller.

The RPC table is generated from the service descriptors, so an RPC added without a scope rule fails
here before it ships open.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import requests
import trustme
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from generation_analytics.cli import main as cli_main
from generation_analytics.client import AnalyticsClient, AnalyticsClientError
from generation_analytics.service.api import keys
from generation_analytics.service.api.auth import RPC_RULES, auth_enabled, is_loopback, rpc_requirement
from generation_analytics.service.api.gateway import PREFIX, ROUTES
from generation_analytics.service.api.keys import Scope
from generation_analytics.service.settings import AuthSettings, Settings, TlsSettings
from generation_analytics.v1 import alerts_pb2, analytics_pb2, events_pb2, pipeline_pb2
from tests.fix_processes import CLI, free_port
from tests.fix_server import LiveServer

SERVICES = [
    events_pb2.DESCRIPTOR.services_by_name["EventService"],
    analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"],
    pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"],
    alerts_pb2.DESCRIPTOR.services_by_name["AlertService"],
]
METHODS = [(service, method) for service in SERVICES for method in service.methods]
CACHE_S = 0.3  # the revocation delay under test


@dataclass
class Keys:
    """A token per kind of caller; `revoked` was valid once."""

    tokens: dict[str, str]
    ids: dict[str, str]


def make_keys(dsn: str) -> Keys:
    tokens, ids = {}, {}
    with psycopg.connect(dsn) as conn:
        for name, scopes in {
            "ingest": {Scope.INGEST},
            "read": {Scope.READ},
            "admin": {Scope.ADMIN},
            "all": set(Scope),
            "revoked": set(Scope),
        }.items():
            key, token = keys.create_key(conn, name=name, scopes=frozenset(scopes))
            tokens[name], ids[name] = token, key.id
        keys.revoke_key(conn, ids["revoked"])
    tokens["wrong secret"] = tokens["all"][:-4] + ("AAAA" if not tokens["all"].endswith("AAAA") else "BBBB")
    tokens["malformed"] = "not-a-key"
    tokens["unknown id"] = "ga_000000000000_" + "x" * 43
    return Keys(tokens, ids)


@pytest.fixture
def secured(settings: Settings) -> Iterator[tuple[LiveServer, Keys]]:
    made = make_keys(settings.postgres.dsn)
    server = LiveServer(replace(settings, auth=AuthSettings(mode="on", cache_s=CACHE_S)))
    try:
        yield server, made
    finally:
        server.close()


def call(server: LiveServer, service: Any, method: Any, token: str | None) -> grpc.StatusCode:
    """Call any RPC with an empty request; the status code it answers."""
    request_cls = GetMessageClass(method.input_type)
    stub = server.channel.unary_unary(
        f"/{service.full_name}/{method.name}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=lambda b: b,
    )
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    try:
        stub(request_cls(), timeout=30, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


DENIED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def test_every_rpc_has_a_rule() -> None:
    missing = [f"/{s.full_name}/{m.name}" for s, m in METHODS if f"/{s.full_name}/{m.name}" not in RPC_RULES]
    assert missing == [], "add a scope rule in service/api/auth.py for these RPCs"
    assert rpc_requirement("/generation_analytics.v1.NewService/Unknown") is Scope.ADMIN  # fail closed


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[m.name for _, m in METHODS])
def test_each_caller_gets_what_its_key_allows(secured: tuple[LiveServer, Keys], service: Any, method: Any) -> None:
    server, made = secured
    need = RPC_RULES[f"/{service.full_name}/{method.name}"]
    for who in ("malformed", "wrong secret", "unknown id", "revoked"):
        assert call(server, service, method, made.tokens[who]) == grpc.StatusCode.UNAUTHENTICATED, who
    assert call(server, service, method, None) == grpc.StatusCode.UNAUTHENTICATED
    for scope in Scope:
        code = call(server, service, method, made.tokens[scope.value])
        if scope is need:
            assert code not in DENIED, (scope, code)
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (scope, code)
    assert call(server, service, method, made.tokens["all"]) not in DENIED


def test_a_refusal_names_the_missing_scope(secured: tuple[LiveServer, Keys]) -> None:
    server, made = secured
    with (
        AnalyticsClient(server.address, api_key=made.tokens["ingest"], retries=0) as client,
        pytest.raises(AnalyticsClientError) as error,
    ):
        client.overview()
    assert error.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "'read' scope" in error.value.details


def test_health_is_open_and_reflection_needs_any_valid_key(secured: tuple[LiveServer, Keys]) -> None:
    server, made = secured
    health = health_pb2_grpc.HealthStub(server.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(server.channel)

    def list_services(token: str | None) -> grpc.StatusCode:
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        try:
            replies = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5, metadata=metadata
            )
            assert any(r.list_services_response.service for r in replies)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    assert list_services(None) == grpc.StatusCode.UNAUTHENTICATED
    assert list_services(made.tokens["revoked"]) == grpc.StatusCode.UNAUTHENTICATED
    assert list_services(made.tokens["ingest"]) == grpc.StatusCode.OK


# What a path needs besides the key to answer 200 (its required parameters).
REQUIRED = {"/models/compare": "?model_checkpoint_a=sdxl-1.0&model_checkpoint_b=sdxl-1.1"}
HTTP_PATHS = [
    PREFIX + path.replace("{user_id}", "550e8400-e29b-41d4-a716-446655440000") + REQUIRED.get(path, "")
    for path in ROUTES
]
HTTP_PATHS += [f"{PREFIX}/pipeline/status", "/metrics", f"{PREFIX}/alerts/rules", f"{PREFIX}/alerts/events"]


@pytest.mark.parametrize("path", HTTP_PATHS)
def test_http_follows_the_same_rules(secured: tuple[LiveServer, Keys], path: str) -> None:
    server, made = secured

    def get(token: str | None) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(server.http + path, headers=headers, timeout=10)

    for who in (None, "malformed", "wrong secret", "revoked"):
        reply = get(made.tokens[who] if who else None)
        assert reply.status_code == 401, who
        assert reply.json()["error"]["code"] == "UNAUTHENTICATED"
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    for scope in ("ingest", "admin"):
        reply = get(made.tokens[scope])
        assert reply.status_code == 403 and "'read' scope" in reply.json()["error"]["message"], scope
    assert get(made.tokens["read"]).status_code == 200
    assert requests.get(server.http + "/healthz", timeout=10).status_code == 200


def test_revocation_takes_effect_within_the_cache_period(secured: tuple[LiveServer, Keys]) -> None:
    server, made = secured
    service = analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"]
    method = service.methods_by_name["GetOverview"]
    assert call(server, service, method, made.tokens["read"]) == grpc.StatusCode.OK
    with psycopg.connect(server.settings.postgres.dsn) as conn:
        assert keys.revoke_key(conn, made.ids["read"])
    revoked_at = time.monotonic()
    while call(server, service, method, made.tokens["read"]) == grpc.StatusCode.OK:
        assert time.monotonic() - revoked_at < CACHE_S * 2 + 1, "the revoked key still works past the delay"
        time.sleep(0.05)
    # A key created after the service started works at once (looked up on first sight).
    with psycopg.connect(server.settings.postgres.dsn) as conn:
        _, fresh = keys.create_key(conn, name="fresh", scopes=frozenset({Scope.READ}))
    assert call(server, service, method, fresh) == grpc.StatusCode.OK


def test_last_use_is_recorded(secured: tuple[LiveServer, Keys]) -> None:
    server, made = secured
    with AnalyticsClient(server.address, api_key=made.tokens["read"]) as client:
        client.overview()
    deadline = time.monotonic() + CACHE_S * 4 + 2
    while True:
        with psycopg.connect(server.settings.postgres.dsn) as conn:
            row = conn.execute("SELECT last_used_at FROM api_keys WHERE id = %s", (made.ids["read"],)).fetchone()
        if row and row[0] is not None:
            break
        assert time.monotonic() < deadline, "last_used_at was never written"
        time.sleep(0.1)


def test_cli_creates_lists_and_revokes_keys(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = settings.postgres.dsn
    assert cli_main(["keys", "create", "--name", "ci", "--scope", "ingest,read", "--dsn", dsn]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("ga_") and keys.parse(token) is not None
    key_id = token.split("_")[1]
    assert cli_main(["keys", "list", "--dsn", dsn]) == 0
    listed = capsys.readouterr().out
    assert key_id in listed and "ingest,read" in listed and token.split("_", 2)[2] not in listed
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("SELECT secret_hash FROM api_keys WHERE id = %s", (key_id,)).fetchone()
    assert stored and bytes(stored[0]) == keys.digest(token.split("_", 2)[2])  # a hash, never the secret
    assert cli_main(["keys", "revoke", key_id, "--dsn", dsn]) == 0
    with pytest.raises(SystemExit, match="no live key"):
        cli_main(["keys", "revoke", key_id, "--dsn", dsn])
    with pytest.raises(SystemExit, match="unknown scope"):
        cli_main(["keys", "create", "--name", "x", "--scope", "everything", "--dsn", dsn])


@pytest.mark.parametrize(
    ("addr", "loopback"),
    [("127.0.0.1:50051", True), ("localhost:8001", True), ("[::1]:50051", True), ("127.1.2.3:1", True),
     ("0.0.0.0:50051", False), ("[::]:50051", False), (":50051", False), ("10.0.0.5:50051", False),
     ("example.com:443", False)],
)  # fmt: skip
def test_what_counts_as_loopback(addr: str, loopback: bool) -> None:
    assert is_loopback(addr) is loopback
    assert auth_enabled(AuthSettings(mode="auto"), ["127.0.0.1:1", addr]) is not loopback
    assert auth_enabled(AuthSettings(mode="on"), [addr]) and not auth_enabled(AuthSettings(mode="off"), [addr])


def test_serving_a_network_without_keys_is_refused(settings: Settings) -> None:
    env = {"PATH": "/usr/bin:/bin", "GA_AUTH": "off", "GA_LISTEN_ADDR": f"0.0.0.0:{free_port()}",
           "GA_POSTGRES_DSN": settings.postgres.dsn, "GA_REDIS_URL": settings.redis.url}  # fmt: skip
    result = subprocess.run([CLI, "serve"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "refusing to serve 0.0.0.0" in result.stderr and "GA_ALLOW_UNAUTHENTICATED" in result.stderr


# ------------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, the server's certificate (127.0.0.1, localhost), a client certificate it signed, and one a
    stranger CA signed."""
    folder = tmp_path_factory.mktemp("tls")
    ca, stranger = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client, foreign = ca.issue_cert("client@example"), stranger.issue_cert("client@example")
    files = {
        "ca": folder / "ca.pem",
        "cert": folder / "server.pem",
        "key": folder / "server.key",
        "client_cert": folder / "client.pem",
        "client_key": folder / "client.key",
        "foreign_cert": folder / "foreign.pem",
        "foreign_key": folder / "foreign.key",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    foreign.cert_chain_pems[0].write_to_path(str(files["foreign_cert"]))
    foreign.private_key_pem.write_to_path(str(files["foreign_key"]))
    return files


def overview_code(address: str, **options: Any) -> grpc.StatusCode:
    try:
        with AnalyticsClient(address, retries=0, timeout_s=5, **options) as client:
            client.overview()
    except AnalyticsClientError as exc:
        return exc.code
    return grpc.StatusCode.OK


def test_tls_serves_gprc_and_https_to_clients_that_trust_the_ca(
    settings: Settings, certificates: dict[str, Path]
) -> None:
    tls = TlsSettings(cert_file=str(certificates["cert"]), key_file=str(certificates["key"]))
    server = LiveServer(replace(settings, tls=tls))
    try:
        assert overview_code(server.address, ca_file=str(certificates["ca"])) == grpc.StatusCode.OK
        assert overview_code(server.address, tls=True) == grpc.StatusCode.UNAVAILABLE  # system roots: unknown CA
        assert overview_code(server.address, tls=False) == grpc.StatusCode.UNAVAILABLE  # plaintext to a TLS port
        https = server.http.replace("http://", "https://")
        assert requests.get(https + PREFIX + "/overview", verify=str(certificates["ca"]), timeout=10).ok
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(https + PREFIX + "/overview", timeout=10)
    finally:
        server.close()


def test_mtls_requires_a_client_certificate_from_the_trusted_ca(
    settings: Settings, certificates: dict[str, Path]
) -> None:
    tls = TlsSettings(
        cert_file=str(certificates["cert"]), key_file=str(certificates["key"]), client_ca_file=str(certificates["ca"])
    )
    server = LiveServer(replace(settings, tls=tls))
    ca = str(certificates["ca"])
    try:
        mine = {
            "client_cert_file": str(certificates["client_cert"]),
            "client_key_file": str(certificates["client_key"]),
        }
        foreign = {
            "client_cert_file": str(certificates["foreign_cert"]), "client_key_file": str(certificates["foreign_key"])
        }  # fmt: skip
        assert overview_code(server.address, ca_file=ca, **mine) == grpc.StatusCode.OK
        assert overview_code(server.address, ca_file=ca) == grpc.StatusCode.UNAVAILABLE
        assert overview_code(server.address, ca_file=ca, **foreign) == grpc.StatusCode.UNAVAILABLE
        https = server.http.replace("http://", "https://") + PREFIX + "/overview"
        client_pair = (str(certificates["client_cert"]), str(certificates["client_key"]))
        assert requests.get(https, verify=ca, cert=client_pair, timeout=10).ok
        for cert in (None, (str(certificates["foreign_cert"]), str(certificates["foreign_key"]))):
            with pytest.raises(requests.exceptions.RequestException):
                requests.get(https, verify=ca, cert=cert, timeout=10)
    finally:
        server.close()
