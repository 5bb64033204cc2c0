"""TLS with certificates made by trustme: wss:// and https:// on one port, evkit's
clients trusting a private CA (a file or an SSLContext), client certificates, and a
clear error for every unusable file."""

from __future__ import annotations

import asyncio
import http.client
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import trustme

import evkit
from evkit.client import Subscriber
from evkit.testing import wait_until, wait_until_async
from evkit.tls import client_context, server_context
from tests.cli_support import run_evkit, serving, started


@dataclass
class Pki:
    """A CA, the server's certificate (key in the same file and apart), a client's."""

    ca: trustme.CA
    ca_file: Path
    server_pem: Path
    server_cert: Path
    server_key: Path
    client_pem: Path

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@example")
    paths = {name: folder / f"{name}.pem" for name in ("ca", "server", "cert", "key", "client")}
    ca.cert_pem.write_to_path(paths["ca"])
    server.private_key_and_cert_chain_pem.write_to_path(paths["server"])
    for blob in server.cert_chain_pems:
        blob.write_to_path(paths["cert"], append=True)
    server.private_key_pem.write_to_path(paths["key"])
    client.private_key_and_cert_chain_pem.write_to_path(paths["client"])
    return Pki(ca, paths["ca"], paths["server"], paths["cert"], paths["key"], paths["client"])


@pytest.fixture
def tls_server(pki: Pki) -> Iterator[evkit.Server]:
    srv = evkit.serve(port=0, ssl_certfile=str(pki.server_cert), ssl_keyfile=str(pki.server_key))
    try:
        yield srv
    finally:
        srv.stop()


def test_the_same_port_serves_wss_and_https(tls_server: evkit.Server, pki: Pki) -> None:
    assert tls_server.url.startswith("wss://127.0.0.1:")
    assert tls_server.http_url == f"https://127.0.0.1:{tls_server.port}"
    connection = http.client.HTTPSConnection(
        "127.0.0.1", tls_server.port, context=pki.context(), timeout=10
    )
    try:
        for _ in range(2):  # keep-alive over TLS too
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            assert response.status == 200
            assert orjson.loads(response.read())["status"] == "ok"
        connection.request("HEAD", "/")
        head = connection.getresponse()
        assert (head.status, head.read()) == (200, b"")
    finally:
        connection.close()


@pytest.mark.parametrize("how", ["ca file", "context"])
def test_the_collector_trusts_a_private_ca(tls_server: evkit.Server, pki: Pki, how: str) -> None:
    trust = str(pki.ca_file) if how == "ca file" else pki.context()
    with evkit.collect(tls_server, ["repo.*"], ssl=trust) as collector:
        evkit.emit("repo.commit.created", {"n": 1})
        evkit.flush()
        frame = collector.wait(count=1, timeout=10).to_dataframe()
    assert list(frame["type"]) == ["repo.commit.created"]


def test_subscribe_iterates_over_wss(tls_server: evkit.Server, pki: Pki) -> None:
    async def first_event() -> str:
        async with evkit.subscribe(tls_server, ["repo.*"], ssl=str(pki.ca_file)) as stream:
            async for event in stream:
                return event.type
        return ""

    async def run() -> str:
        task = asyncio.create_task(first_event())
        await wait_until_async(lambda: tls_server.stats()["clients"] == 1, "subscribed", 10)
        evkit.emit("repo.commit.created", {"n": 1})
        return await asyncio.wait_for(task, 10)

    assert asyncio.run(run()) == "repo.commit.created"


def test_a_certificate_it_does_not_trust_is_refused(tls_server: evkit.Server) -> None:
    with pytest.raises(evkit.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        evkit.collect(tls_server, connect_timeout=2)


def test_the_forwarder_publishes_over_wss(tls_server: evkit.Server, pki: Pki) -> None:
    bus = evkit.EventBus()
    with evkit.collect(tls_server, ["svc.*"], ssl=str(pki.ca_file)) as collector:
        forwarder = evkit.connect(tls_server.url, bus=bus, ssl=str(pki.ca_file))
        try:
            bus.emit("svc.job.completed", {"duration": 5})
            forwarder.flush(timeout=10)
            collector.wait(count=1, timeout=10)
        finally:
            forwarder.stop()


def test_client_certificates_are_required_when_a_ca_is_given(pki: Pki) -> None:
    srv = evkit.serve(port=0, ssl_certfile=str(pki.server_pem), ssl_ca_certs=str(pki.ca_file))
    try:
        with pytest.raises(evkit.ConnectError):
            evkit.collect(srv, ssl=str(pki.ca_file), connect_timeout=2)
        context = pki.context()
        context.load_cert_chain(pki.client_pem)
        with evkit.collect(srv, ["*"], ssl=context) as collector:
            evkit.emit("repo.push.completed", {})
            evkit.flush()
            collector.wait(count=1, timeout=10)
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ssl_certfile": "/no/such.pem"}, "ssl_certfile: '/no/such.pem' does not exist"),
        ({"ssl_certfile": "ca"}, "holds no private key: give ssl_keyfile too"),
        ({"ssl_certfile": "cert", "ssl_keyfile": "ca"}, "cannot load the certificate from"),
        ({"ssl_certfile": "key"}, "holds no PEM certificate"),
        ({"ssl_certfile": "server", "ssl_ca_certs": "key"}, "ssl_ca_certs: "),
        ({"ssl_keyfile": "key"}, "ssl_keyfile needs ssl_certfile"),
    ],
)
def test_unusable_files_are_clear_errors(pki: Pki, options: dict[str, str], message: str) -> None:
    files = {
        "ca": pki.ca_file,
        "cert": pki.server_cert,
        "key": pki.server_key,
        "server": pki.server_pem,
    }
    given = {k: str(files.get(v, v)) for k, v in options.items()}
    with pytest.raises(ValueError, match=re.escape(message)):
        evkit.serve(port=0, **given)
    assert evkit.running_servers() == []


def test_server_context_needs_a_certificate_and_client_context_a_wss_url(pki: Pki) -> None:
    assert server_context(None) is None
    assert client_context(None, "wss://x/ws/events") is None
    with pytest.raises(ValueError, match="not a wss:// URL"):
        client_context(str(pki.ca_file), "ws://127.0.0.1:3000/ws/events")
    with pytest.raises(ValueError, match="not a wss:// URL"):
        Subscriber("ws://127.0.0.1:9/ws/events", on_event=print, ssl=str(pki.ca_file))
    with pytest.raises(ValueError, match="CA file: '/nope' does not exist"):
        client_context("/nope", "wss://x/ws/events")


def test_the_command_line_over_wss(pki: Pki, tmp_path: Path) -> None:
    with serving(
        "--ssl-certfile", str(pki.server_cert), "--ssl-keyfile", str(pki.server_key)
    ) as server:
        assert server.url.startswith("wss://")
        trust = ("--url", server.url, "--ca-file", str(pki.ca_file))
        with started("tail", *trust, "--patterns", "cli.*", "--count", "1") as tail:
            tail.wait_for("websocket.connected")
            published = run_evkit("publish", "cli.tls.sent", *trust)
            assert published.returncode == 0, published.stderr
            assert tail.process.wait(30) == 0
            assert "cli.tls.sent" in "".join(tail.stdout)
        refused = run_evkit(
            "publish", "cli.tls.sent", "--url", server.url, "--connect-timeout", "2"
        )
        assert refused.returncode == 1
        assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr
        assert "Traceback" not in refused.stderr
        environment = {"EVKIT_URL": server.url, "EVKIT_CA_FILE": str(pki.ca_file)}
        recorded = run_evkit(
            "record", "--out", str(tmp_path / "tls.jsonl"), "--seconds", "0.5", env=environment
        )
        assert recorded.returncode == 0, recorded.stderr


def test_a_client_certificate_from_the_command_line(pki: Pki) -> None:
    srv = evkit.serve(port=0, ssl_certfile=str(pki.server_pem), ssl_ca_certs=str(pki.ca_file))
    try:
        trust = ("--url", srv.url, "--ca-file", str(pki.ca_file))
        without = run_evkit("publish", "cli.mtls.sent", *trust, "--connect-timeout", "2")
        assert without.returncode == 1
        with_cert = run_evkit("publish", "cli.mtls.sent", *trust, "--cert", str(pki.client_pem))
        assert with_cert.returncode == 0, with_cert.stderr
        wrong = run_evkit("publish", "x.y", "--url", "wss://127.0.0.1:9", "--ca-file", "/nope")
        assert wrong.returncode == 2
        assert "CA file: '/nope' does not exist" in wrong.stderr
    finally:
        srv.stop()


def test_subscriber_over_wss_on_its_own_loop(tls_server: evkit.Server, pki: Pki) -> None:
    seen: list[dict[str, object]] = []

    async def scenario() -> None:
        subscriber = Subscriber(tls_server.url, ["a.*"], on_event=seen.append, ssl=pki.context())
        task = asyncio.ensure_future(subscriber.run())
        await subscriber.wait_connected(10)
        evkit.emit("a.b.c", {})
        evkit.flush()
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.05)
        await subscriber.stop()
        await task

    asyncio.run(scenario())
    wait_until(lambda: len(seen) == 1, "the event over wss", 1)
