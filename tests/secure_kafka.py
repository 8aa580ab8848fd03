"""A secured Kafka for the tests: the embedded Tansu broker behind a TLS- and SASL-terminating proxy.

Tansu's own TLS listener does not work in this build, and its SASL support
cannot be used here: with ``--authentication`` it refuses every mechanism a
client offers (``NoSharedMechanism``, PLAIN and SCRAM alike) and refuses to
create users (``NotAuthenticated``), and without it it answers every SASL
handshake with ``UnsupportedSaslMechanism``. So security is terminated in
front of it, by :class:`KafkaProxy`, on loopback:

- TLS with a server certificate signed by a CA made at test time
  (:func:`make_certificates`, with the ``cryptography`` package); optionally
  requiring a client certificate signed by the same CA (mTLS);
- SASL/PLAIN as a Kafka broker does it: ``ApiVersions`` is answered by the
  broker, ``SaslHandshake`` and ``SaslAuthenticate`` by the proxy, which checks
  the password and answers a wrong one with ``SASL_AUTHENTICATION_FAILED`` and a
  closed connection; any other request before authentication closes the
  connection. Once authenticated, bytes flow unchanged.

Tansu advertises the proxy's address (``--advertised-listener-url``), so every
connection a client makes after reading metadata goes through the proxy too.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.broker import free_port, tansu_binary, wait_for_metadata, wait_for_port

SASL_HANDSHAKE, SASL_AUTHENTICATE, API_VERSIONS = 17, 36, 18
UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 33, 58


@dataclass(frozen=True)
class Certificates:
    """PEM files: a CA, a server certificate for 127.0.0.1/localhost, a client certificate whose key is
    encrypted with ``key_password``, and a second CA that signed neither."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    key_password: str
    other_ca: Path


def make_certificates(directory: Path, key_password: str) -> Certificates:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def builder(subject: str, issuer: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer).public_key(public_key)
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=2)))

    def ca(common: str) -> tuple[Any, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (builder(common, name(common), key.public_key())
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return key, cert

    def leaf(common: str, ca_key: Any, ca_cert: x509.Certificate, usage: Any, san: list[Any] | None) -> tuple[Any, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (builder(common, ca_cert.subject, key.public_key())
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, b.sign(ca_key, hashes.SHA256())

    def write_cert(path: Path, cert: x509.Certificate) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def write_key(path: Path, key: Any, password: str | None = None) -> Path:
        encryption = (serialization.BestAvailableEncryption(password.encode()) if password
                      else serialization.NoEncryption())
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
        return path

    ca_key, ca_cert = ca("driftwarden test CA")
    server_key, server_cert = leaf("127.0.0.1", ca_key, ca_cert, ExtendedKeyUsageOID.SERVER_AUTH,
                                   [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client_key, client_cert = leaf("driftwarden-worker", ca_key, ca_cert, ExtendedKeyUsageOID.CLIENT_AUTH, None)
    _, other_cert = ca("some other CA")
    return Certificates(
        ca=write_cert(directory / "ca.pem", ca_cert),
        server_cert=write_cert(directory / "server.pem", server_cert),
        server_key=write_key(directory / "server.key", server_key),
        client_cert=write_cert(directory / "client.pem", client_cert),
        client_key=write_key(directory / "client.key", client_key, key_password),
        key_password=key_password,
        other_ca=write_cert(directory / "other-ca.pem", other_cert),
    )


def server_context(certs: Certificates, *, require_client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    if require_client_cert:
        context.load_verify_locations(cafile=str(certs.ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


# -- the Kafka wire format, as much of it as SASL needs ----------------------------------------------


def _uvarint(data: bytes, at: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _put_uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _request_body(frame: bytes, flexible: bool) -> tuple[int, int, int, bytes]:
    """api key, version, correlation id and the body of a request frame (header v1, or v2 if flexible)."""
    api_key, version, correlation = struct.unpack_from(">hhi", frame, 0)
    at = 8
    (client_len,) = struct.unpack_from(">h", frame, at)
    at += 2 + max(client_len, 0)
    if flexible:
        tags, at = _uvarint(frame, at)
        for _ in range(tags):
            _, at = _uvarint(frame, at)
            size, at = _uvarint(frame, at)
            at += size
    return api_key, version, correlation, frame[at:]


def _string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def _handshake_response(correlation: int, error: int) -> bytes:
    return struct.pack(">ihi", correlation, error, 1) + _string("PLAIN")


def _authenticate_response(correlation: int, version: int, error: int, message: str | None) -> bytes:
    if version >= 2:  # flexible: response header v1 and compact types
        raw = message.encode() if message is not None else None
        text = _put_uvarint(0) if raw is None else _put_uvarint(len(raw) + 1) + raw
        return (struct.pack(">i", correlation) + b"\x00" + struct.pack(">h", error) + text + _put_uvarint(1)
                + struct.pack(">q", 0) + b"\x00")
    text = struct.pack(">h", -1) if message is None else _string(message)
    body = struct.pack(">i", correlation) + struct.pack(">h", error) + text + struct.pack(">i", 0)
    return body + (struct.pack(">q", 0) if version >= 1 else b"")


def plain_token(body: bytes, version: int) -> bytes:
    """The SASL token of a SaslAuthenticate request body."""
    if version >= 2:
        size, at = _uvarint(body, 0)
        return body[at:at + size - 1]
    (size,) = struct.unpack_from(">i", body, 0)
    return body[4:4 + size]


# -- the proxy ------------------------------------------------------------------------------------------


@dataclass
class KafkaProxy:
    """Listens on ``127.0.0.1:port`` (TLS when ``tls`` is given) and forwards to the broker on
    ``upstream_port``; with ``users`` it requires SASL/PLAIN first. Runs its own event loop in a thread."""

    upstream_port: int
    port: int = 0
    host: str = "127.0.0.1"
    tls: ssl.SSLContext | None = None
    users: dict[str, str] | None = None
    authentications: list[tuple[str, bool]] = field(default_factory=list)
    """(username, accepted) of every SaslAuthenticate seen (never the password)."""
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.base_events.Server | None = None

    def __post_init__(self) -> None:
        if self.port == 0:
            self.port = free_port()

    def start(self) -> KafkaProxy:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._client, self.host, self.port, ssl=self.tls))
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"kafka-proxy-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        loop = self._loop

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                task.cancel()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()
        self._loop = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        try:
            if self.users is not None and not await self._authenticate(reader, writer, up_reader, up_writer):
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> bool:
        """The SASL exchange; True once the client has authenticated."""
        assert self.users is not None
        handshaken = False
        while True:
            frame = await _read_frame(reader)
            api_key, version = struct.unpack_from(">hh", frame, 0)
            if api_key == API_VERSIONS:  # the broker knows its versions (its answer lists 17 and 36)
                up_writer.write(struct.pack(">i", len(frame)) + frame)
                await up_writer.drain()
                answer = await _read_frame(up_reader)
                writer.write(struct.pack(">i", len(answer)) + answer)
                await writer.drain()
            elif api_key == SASL_HANDSHAKE and version >= 1:
                _, _, correlation, body = _request_body(frame, flexible=False)
                (size,) = struct.unpack_from(">h", body, 0)
                mechanism = body[2:2 + size].decode(errors="replace")
                ok = mechanism == "PLAIN"
                await _write_frame(writer, _handshake_response(correlation, 0 if ok else UNSUPPORTED_SASL_MECHANISM))
                if not ok:
                    return False
                handshaken = True
            elif api_key == SASL_AUTHENTICATE and handshaken:
                _, _, correlation, body = _request_body(frame, flexible=version >= 2)
                parts = plain_token(body, version).split(b"\x00")
                user, password = (parts[1].decode(errors="replace"), parts[2].decode(errors="replace")) \
                    if len(parts) == 3 else ("", None)
                accepted = password is not None and self.users.get(user) == password
                self.authentications.append((user, accepted))
                message = None if accepted else "Authentication failed: Invalid username or password"
                await _write_frame(writer, _authenticate_response(correlation, version,
                                                                  0 if accepted else SASL_AUTHENTICATION_FAILED, message))
                return accepted
            else:  # as Kafka does: nothing else before authentication
                return False


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


async def _write_frame(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(struct.pack(">i", len(payload)) + payload)
    await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(256 * 1024)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@dataclass
class SecuredBroker:
    """Tansu on a loopback port nobody is told about, advertising the proxy in front of it."""

    proxy: KafkaProxy
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    def start(self, **client_options: Any) -> SecuredBroker:
        """Start the proxy and Tansu; wait until a client with ``client_options`` gets metadata."""
        self.proxy.start()
        advertised = f"tcp://127.0.0.1:{self.proxy.port}"
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{self.proxy.upstream_port}",
                 "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_for_port("127.0.0.1", self.proxy.upstream_port, 20)
            wait_for_metadata(self.bootstrap, 30, **client_options)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
        self.proxy.stop()


def secured_broker(log_path: Path, *, tls: ssl.SSLContext | None = None, users: dict[str, str] | None = None,
                   **client_options: Any) -> SecuredBroker:
    return SecuredBroker(KafkaProxy(upstream_port=free_port(), tls=tls, users=users), log_path).start(**client_options)
