"""docs/operations.md, "Behind a proxy: trusted_proxies and proxy_header" and "TLS": the
client's address behind trusted proxies (it keys every per-address limit and the audit's
source), the per-node connection cap, TLS in the process."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
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


XFF, FWD = "x-forwarded-for", "forwarded"


@pytest.mark.parametrize(
    ("peer", "header", "forwarded", "xff", "client"),
    [
        ("127.0.0.2", XFF, [], ["198.51.100.7"], "198.51.100.7"),
        ("127.0.0.2", XFF, [], ["6.6.6.6, 198.51.100.7"], "198.51.100.7"),  # left: forgeable
        ("127.0.0.2", XFF, [], ["198.51.100.7, 10.1.2.3"], "198.51.100.7"),  # two proxies
        ("127.0.0.2", XFF, [], ["198.51.100.7", "10.1.2.3"], "198.51.100.7"),  # two lines
        ("127.0.0.2", XFF, [], ["10.9.9.9, 10.1.2.3"], "10.9.9.9"),  # only proxies: farthest
        ("127.0.0.2", XFF, [], [], "127.0.0.2"),  # no header: the proxy itself
        ("127.0.0.2", XFF, [], ["unknown"], "127.0.0.2"),
        ("127.0.0.2", XFF, [], ["198.51.100.7, garbage"], "127.0.0.2"),
        ("127.0.0.2", XFF, [], ["198.51.100.7:4711"], "198.51.100.7"),
        ("127.0.0.2", FWD, ['for="[2001:db8::1]:4711";proto=https'], ["9.9.9.9"], "2001:db8::1"),
        ("127.0.0.2", FWD, ["for=192.0.2.60;by=10.0.0.1, for=10.1.1.1"], [], "192.0.2.60"),
        ("127.0.0.2", FWD, ["For=192.0.2.61"], [], "192.0.2.61"),
        ("127.0.0.2", FWD, ["proto=https"], [], "127.0.0.2"),
        ("127.0.0.2", XFF, [], ["::ffff:198.51.100.8"], "198.51.100.8"),
        ("127.0.0.3", XFF, [], ["198.51.100.7"], "127.0.0.3"),  # an untrusted peer: ignored
        ("127.0.0.3", FWD, ["for=198.51.100.7"], [], "127.0.0.3"),
        # Only the configured header is read: the other is the client's own, whatever it says.
        ("127.0.0.2", XFF, ["for=6.6.6.6"], ["198.51.100.7"], "198.51.100.7"),
        ("127.0.0.2", XFF, ["for=6.6.6.6"], [], "127.0.0.2"),
        ("127.0.0.2", FWD, ["for=198.51.100.7"], ["6.6.6.6"], "198.51.100.7"),
        ("127.0.0.2", FWD, [], ["6.6.6.6"], "127.0.0.2"),
    ],
)
def test_the_client_is_the_rightmost_untrusted_entry_of_the_proxy_header_from_a_trusted_peer(
    peer: str, header: str, forwarded: list[str], xff: list[str], client: str
) -> None:
    assert client_address(peer, forwarded, xff, TRUSTED, header) == client


def test_without_trusted_proxies_the_headers_are_never_read() -> None:
    for header in (XFF, FWD):
        assert client_address("127.0.0.2", ["for=1.2.3.4"], ["1.2.3.4"], (), header) == (
            "127.0.0.2"
        )


def test_proxy_header_comes_from_flags_variables_and_toml_and_bad_ones_are_refused(
    tmp_path: Path,
) -> None:
    assert load_settings(environ={}).proxy_header == XFF
    assert load_settings(environ={"OMS_AUTH_PROXY_HEADER": "Forwarded"}).proxy_header == FWD
    config = tmp_path / "c.toml"
    config.write_text('proxy-header = "forwarded"\n')
    assert load_settings(config_file=str(config), environ={}).proxy_header == FWD
    with pytest.raises(ConfigError, match="proxy_header"):
        load_settings(environ={"OMS_AUTH_PROXY_HEADER": "x-real-ip"})
    bad = oms_auth(tmp_path, "serve", "--proxy-header", "x-real-ip", check=False)
    assert bad.returncode == 2 and "proxy_header" in bad.stderr
    assert "Traceback" not in bad.stderr


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


async def post_via(app: App, peer: str, path: str, body: bytes, **headers: str) -> Any:
    """One HTTP POST from ``peer`` (bound to that local address); the JSON answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port, local_addr=(peer, 0))
    head = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}"]
    head += ["Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return orjson.loads(raw.partition(b"\r\n\r\n")[2])


WRONG = orjson.dumps({"UserName": "nobody", "Password": "Wrong-1x"})


async def test_behind_a_proxy_that_appends_x_forwarded_for_a_client_sent_forwarded_is_ignored(
    proxied: App,
) -> None:
    """The default proxy_header: nginx and HAProxy append X-Forwarded-For and pass the
    client's own Forwarded through untouched; it must not pick the client's address."""
    app = proxied
    answers = []
    for n in range(3):  # the limit is 3 failures per address: each forged address is new
        async with await via(
            app, PROXY, Forwarded=f"for=6.6.6.{n}", **{"X-Forwarded-For": "198.51.100.5"}
        ) as c:
            answers += await wrong_logins(c, 1)
        forged = {"Forwarded": f"for=7.7.7.{n}", "X-Forwarded-For": "198.51.100.5"}
        answers.append(
            (await post_via(app, PROXY, "/AP/AuthenticateUser", WRONG, **forged))["errormsg"]
        )
    assert answers[3:] == [TOO_MANY] * 3
    rows = await app.deps.store.audit_rows(limit=None)
    assert {r.source for r in rows if r.action == "login-failed"} == {"198.51.100.5"}


async def test_with_proxy_header_forwarded_a_client_sent_x_forwarded_for_is_ignored(
    tmp_path: Path, clock: Clock, db: str
) -> None:
    settings = settings_for(
        tmp_path,
        db=db,
        trusted_proxies=[PROXY],
        proxy_header="forwarded",
        login_failures_per_source=3,
    )
    async with App(settings, clock=clock, login_delay=0) as app:
        answers = []
        for n in range(5):
            headers = {"Forwarded": 'for="[2001:db8::7]"', "X-Forwarded-For": f"6.6.6.{n}"}
            answer = await post_via(app, PROXY, "/AP/AuthenticateUser", WRONG, **headers)
            answers.append(answer["errormsg"])
        assert answers[3:] == [TOO_MANY] * 2
        rows = await app.deps.store.audit_rows(limit=None)
        assert {r.source for r in rows if r.action == "login-failed"} == {"2001:db8::7"}


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
