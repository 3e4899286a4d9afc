"""TLS, mutual TLS and bearer tokens: on the service, its clients and its links to
model servers."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._pb import footprints_pb2 as pb
from service.client import FootprintsClient
from service.remote.servers import Link
from service.transport import ClientSecurity

from ..certs import make
from ..servers import CRS, TRANSFORM, RunningServer, config, scrape

TILE = np.zeros((3, 200, 200), np.uint8)


def _segment(address: str, security: ClientSecurity | None = None) -> int:
    with FootprintsClient(address, security, timeout=30) as client:
        mask, result = client.segment_array(TILE, CRS, TRANSFORM, model="amll", window=252)
    return result.summary.height


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Our CA and its certificates, and another CA's ("other") that must be refused."""
    folder = tmp_path_factory.mktemp("pki")
    (folder / "other").mkdir()
    return {**make(folder), "other": make(folder / "other", "another CA")}


def test_tls_round_trip_and_a_plain_client_is_refused(store, pki):
    s = RunningServer(config(store, tls_cert=pki["server_cert"], tls_key=pki["server_key"]))
    try:
        assert _segment(s.address, ClientSecurity(ca=pki["ca"])) == 200
        with pytest.raises(grpc.RpcError) as err:
            _segment(s.address)  # plain text to a TLS port
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as err:
            _segment(s.address, ClientSecurity(ca=pki["other"]["ca"]))  # a CA that did not sign the server
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        s.stop()


def test_mutual_tls_needs_a_client_certificate_the_ca_signed(store, pki):
    s = RunningServer(config(store, tls_cert=pki["server_cert"], tls_key=pki["server_key"], tls_client_ca=pki["ca"]))
    try:
        assert _segment(s.address, ClientSecurity(ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"])) == 200
        for security in (
            ClientSecurity(ca=pki["ca"]),  # no client certificate
            ClientSecurity(ca=pki["ca"], cert=pki["other"]["client_cert"], key=pki["other"]["client_key"]),  # someone else's CA
        ):
            with pytest.raises(grpc.RpcError) as err:
                _segment(s.address, security)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        s.stop()


def test_bearer_tokens_refuse_calls_without_one_and_health_stays_open(store, tmp_path, caplog):
    tokens = tmp_path / "tokens"
    tokens.write_text("# clients\nsecret-one\nsecret-two\n")
    s = RunningServer(config(store, tokens_file=tokens))
    try:
        for token in (None, "wrong"):
            with pytest.raises(grpc.RpcError) as err:
                _segment(s.address, ClientSecurity(token=token))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in err.value.details()
        with FootprintsClient(s.address, ClientSecurity(token="wrong")) as client, pytest.raises(grpc.RpcError) as err:
            client.list_models()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _segment(s.address, ClientSecurity(token="secret-two")) == 200
        with grpc.insecure_channel(s.address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        m = scrape(s.metrics_url)
        assert m['footprints_requests_total{code="UNAUTHENTICATED",method="SegmentTile"}'] == 2
        assert "secret" not in caplog.text and "wrong" not in caplog.text  # tokens are never logged
        # Each refusal is one call line like any other: request id, method, code.
        refusals = [r.fields for r in caplog.records if getattr(r, "fields", None) and r.fields["code"] == "UNAUTHENTICATED"]
        assert [f["method"] for f in refusals] == ["SegmentTile", "SegmentTile", "ListModels"]
        assert all(len(f["request_id"]) == 16 for f in refusals)
        with pytest.raises(grpc.RpcError) as err:
            with FootprintsClient(s.address) as client:
                client.stub.ListModels(pb.ListModelsRequest(), metadata=(("x-request-id", "req-7"),), timeout=10)
        assert dict(err.value.trailing_metadata())["x-request-id"] == "req-7"
        assert any(getattr(r, "fields", {}).get("request_id") == "req-7" for r in caplog.records)
    finally:
        s.stop()


def test_the_link_to_model_servers_speaks_mutual_tls_with_a_token(store, pki, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("model-tier-token\n")
    model_server = RunningServer(
        config(store, tls_cert=pki["server_cert"], tls_key=pki["server_key"], tls_client_ca=pki["ca"], tokens_file=tokens)
    )
    try:
        link = Link(
            security=ClientSecurity(ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"], token="model-tier-token")
        )
        front = RunningServer(config(store, model_servers=[model_server.address], link=link))
        try:
            with FootprintsClient(front.address) as client:
                _, result = client.segment_array(TILE, CRS, TRANSFORM, model="amll", window=252)
            assert result.summary.backend == "remote" and result.summary.height == 200
        finally:
            front.stop()
        assert scrape(model_server.metrics_url)['footprints_windows_total{model="amll/1"}'] > 0
    finally:
        model_server.stop()
