"""SPEC section 6a, deployment: the client's address behind trusted proxies (it keys every
per-address limit and the audit's source), the per-node connection cap, TLS in the process."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from oms_auth.app import App
from oms_auth.config import ConfigError, load_settings
from oms_auth.server.forwarded import client_address
from protocol.client import Client

from .helpers import PASSWORD, Clock, make_user, oms_auth, settings_for

PROXY = "127.0.0.2"
TRUSTED = (ipaddress.ip_network("127.0.0.2/32"), ipaddress.ip_network("10.0.0.0/8"))
TOO_MANY = "Too many failed login attempts; try again later"


@pytest.mark.parametrize(
    ("peer", "forwarded", "xff", "client"),
    [
        ("127.0.0.2", [], ["198.51.100.7"], "198.51.100.7"),
        ("127.0.0.2", [], ["6.6.6.6, 198.51.100.7"], "198.51.100.7"),  # the left is forgeable
        ("127.0.0.2", [], ["198.51.100.7, 10.1.2.3"], "198.51.100.7"),  # through two proxies
        ("127.0.0.2", [], ["198.51.100.7", "10.1.2.3"], "198.51.100.7"),  # two header lines
        ("127.0.0.2", [], ["10.9.9.9, 10.1.2.3"], "10.9.9.9"),  # only proxies: the farthest
        ("127.0.0.2", [], [], "127.0.0.2"),  # no header: the proxy itself
        ("127.0.0.2", [], ["unknown"], "127.0.0.2"),
        ("127.0.0.2", [], ["198.51.100.7, garbage"], "127.0.0.2"),
        ("127.0.0.2", [], ["198.51.100.7:4711"], "198.51.100.7"),
        ("127.0.0.2", ['for="[2001:db8::1]:4711";proto=https'], ["9.9.9.9"], "2001:db8::1"),
        ("127.0.0.2", ["for=192.0.2.60;by=10.0.0.1, for=10.1.1.1"], [], "192.0.2.60"),
        ("127.0.0.2", ["For=192.0.2.61"], [], "192.0.2.61"),
        ("127.0.0.2", ["proto=https"], [], "127.0.0.2"),
        ("127.0.0.2", [], ["::ffff:198.51.100.8"], "198.51.100.8"),
        ("127.0.0.3", [], ["198.51.100.7"], "127.0.0.3"),  # an untrusted peer: ignored
        ("127.0.0.3", ["for=198.51.100.7"], [], "127.0.0.3"),
    ],
)
def test_the_client_is_the_rightmost_untrusted_forwarded_entry_from_a_trusted_peer(
    peer: str, forwarded: list[str], xff: list[str], client: str
) -> None:
    assert client_address(peer, forwarded, xff, TRUSTED) == client


def test_without_trusted_proxies_the_headers_are_never_read() -> None:
    assert client_address("127.0.0.2", ["for=1.2.3.4"], ["1.2.3.4"], ()) == "127.0.0.2"


def test_trusted_proxies_come_from_flags_variables_and_toml_and_bad_ones_are_refused(
    tmp_path: Path,
) -> None:
    env = {"OMS_AUTH_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.2"}
    assert load_settings(environ=env).trusted_proxies == ["10.0.0.0/8", " 127.0.0.2"]
    config = tmp_path / "c.toml"
    config.write_text('trusted-proxies = ["192.168.0.0/16"]\n')
    loaded = load_settings(config_file=str(config), environ={})
    assert loaded.trusted_networks() == (ipaddress.ip_network("192.168.0.0/16"),)
    flagged = load_settings({"trusted_proxies": ["127.0.0.9"]}, environ=env)
    assert flagged.trusted_proxies == ["127.0.0.9"]
    with pytest.raises(ConfigError, match="not an address or CIDR: 'proxy.local'"):
        load_settings(environ={"OMS_AUTH_TRUSTED_PROXIES": "proxy.local"})
    bad = oms_auth(tmp_path, "serve", "--trusted-proxy", "10.0.0.0/33", check=False)
    assert bad.returncode == 2 and "not an address or CIDR" in bad.stderr
    assert "Traceback" not in bad.stderr


# -- end to end, behind a proxy ---------------------------------------------------------------


@pytest.fixture
async def proxied(tmp_path: Path, clock: Clock, db: str) -> AsyncIterator[App]:
    settings = settings_for(
        tmp_path,
        db=db,
        trusted_proxies=[PROXY],
        login_failures_per_source=3,
        max_connections=6,
    )
    app = App(settings, clock=clock, login_delay=0)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def via(app: App, peer: str, **headers: str) -> Client:
    """A connection from ``peer`` (bound to that local address), sending ``headers``."""
    return await Client.connect(
        app.url, local_addr=(peer, 0), additional_headers=list(headers.items())
    )


async def wrong_logins(c: Client, n: int) -> list[str]:
    answers = []
    for k in range(n):
        o = (await c.call("AuthenticateUser", {"UserName": f"u{k}", "Password": "Wrong-1x"})).o
        answers.append(o["errormsg"])
    return answers


async def test_behind_a_trusted_proxy_each_client_has_its_own_address_limits(
    proxied: App,
) -> None:
    app = proxied
    await make_user(app.deps, "victim")
    xff = "X-Forwarded-For"
    async with await via(app, PROXY, **{xff: "198.51.100.1"}) as attacker:
        assert (await wrong_logins(attacker, 4))[-1] == TOO_MANY
    async with await via(app, PROXY, **{xff: "198.51.100.2"}) as victim:
        reply = await victim.call("AuthenticateUser", {"UserName": "victim", "Password": PASSWORD})
        assert reply.o["Authenticated"] is True
    # A forged header from an untrusted peer changes nothing: that peer is the client.
    async with await via(app, "127.0.0.3", **{xff: "198.51.100.3"}) as forger:
        assert (await wrong_logins(forger, 4))[-1] == TOO_MANY
    async with await via(app, "127.0.0.3", **{xff: "198.51.100.4"}) as again:
        assert (await wrong_logins(again, 1)) == [TOO_MANY]
    sources = {r.source for r in await app.deps.store.audit_rows(limit=None)}
    assert {"198.51.100.1", "198.51.100.2", "127.0.0.3"} <= sources
    assert not sources & {"198.51.100.3", "198.51.100.4", PROXY}


async def test_forwarded_is_read_over_the_http_gateway_too(proxied: App) -> None:
    app = proxied
    base = app.url.replace("ws://", "http://").replace("/WSGateway/", "")

    def get(forwarded: str) -> int:
        req = urllib.request.Request(
            base + "/AP/AuthenticateUser?UserName=nobody&Password=Wrong-1x",
            headers={"Forwarded": forwarded},
        )
        handler = urllib.request.HTTPHandler()
        opener = urllib.request.build_opener(handler)
        # urllib cannot bind a source address: the trusted peer here is 127.0.0.1.
        with opener.open(req) as r:
            return r.status

    app.http.trusted = (ipaddress.ip_network("127.0.0.1/32"),)
    assert await asyncio.to_thread(get, 'for="[2001:db8::7]"') == 200
    rows = await app.deps.store.audit_rows(limit=None)
    assert [r.source for r in rows if r.action == "login-failed"] == ["2001:db8::7"]


async def test_a_node_refuses_connections_past_max_connections_with_1013(proxied: App) -> None:
    app = proxied
    conns = []
    try:
        for n in range(6):  # from six addresses: the per-address cap is not what refuses
            conns.append(await via(app, f"127.0.0.{10 + n}"))
        extra = await via(app, "127.0.0.30")
        with pytest.raises(ConnectionClosed) as closed:
            await extra.call("Ping", {})
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert closed.value.rcvd.reason == "too many connections to this node"
        await extra.close()
        await conns.pop().close()
        await asyncio.sleep(0.05)
        async with await via(app, "127.0.0.31") as c:
            assert (await c.call("Ping", {})).o == {"msg": "PONG"}
    finally:
        await asyncio.gather(*(c.close() for c in conns))


# -- TLS in the process ---------------------------------------------------------------------------


def private_ca(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA of our own and a server certificate it signed for 127.0.0.1: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("oms-auth test CA"))
        .issuer_name(name("oms-auth test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_tls_in_the_process_serves_wss_and_links_and_csp_name_https(
    tmp_path: Path, db: str
) -> None:
    ca, cert, key = private_ca(tmp_path)
    app = App(settings_for(tmp_path, db=db, tls_cert=str(cert), tls_key=str(key)))
    await app.start()
    try:
        assert app.url.startswith("wss://127.0.0.1:") and app.public_url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(ca))
        async with await Client.connect(app.url, ssl=trust) as c:
            assert (await c.call("Ping", {})).o == {"msg": "PONG"}

        def page() -> Any:
            with urllib.request.urlopen(app.public_url + "/reset", context=trust) as r:
                return r.headers["Content-Security-Policy"]

        csp = await asyncio.to_thread(page)
        assert f"connect-src wss://127.0.0.1:{app.port}" in csp
        # A client that does not trust the CA is refused at the handshake.
        with pytest.raises(ssl.SSLCertVerificationError):
            await Client.connect(app.url, ssl=ssl.create_default_context())
    finally:
        await app.stop()


def test_serve_with_an_unusable_certificate_exits_2_with_one_line(tmp_path: Path) -> None:
    _, cert, _ = private_ca(tmp_path)
    (tmp_path / "other.pem").write_text("not a key\n")
    for args in (
        ["--tls-cert", str(cert), "--tls-key", str(tmp_path / "other.pem")],
        ["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(tmp_path / "missing.pem")],
        ["--tls-cert", str(cert)],
    ):
        done = oms_auth(tmp_path, "serve", "--port", "0", *args, check=False)
        assert done.returncode == 2, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
