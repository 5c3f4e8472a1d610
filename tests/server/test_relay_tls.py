"""TLS ending at the relay (``spki_binding = "relay"``, DESIGN 5): the device's
``relay-auth`` statement must name the SHA-256 of the SubjectPublicKeyInfo of the
certificate it saw on the handshake. A statement naming another key (a TLS
man-in-the-middle's) or none is refused, so an authentication made through an
interception proxy cannot be relayed to the real relay."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from e2ee import cbor
from e2ee.auth import sign_relay_auth
from e2ee.primitives import spki_sha256
from e2ee.relay_frames import (
    Auth,
    AuthOk,
    CloseCode,
    Error,
    ErrorCode,
    Hello,
    decode_relay_frame,
)
from tests.server.relay_client import (
    ORIGIN,
    WAIT,
    RelayClient,
    TestAccount,
    make_account,
    relay_settings,
    running_relay,
)


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path, bytes]:
    """A certificate for 127.0.0.1 and its key as PEM files, and the DER certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp_path / f"{name}.pem"
    key_path = tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, cert.public_bytes(serialization.Encoding.DER)


async def _open_tls(port: int, ca: Path) -> tuple[ClientConnection, Hello, bytes]:
    """A TLS WebSocket to the relay, its Hello, and the SPKI hash of the certificate
    the handshake presented."""
    context = ssl.create_default_context(cafile=str(ca))
    ws = await connect(
        f"wss://127.0.0.1:{port}/v1/ws", ssl=context, compression=None, open_timeout=WAIT
    )
    ssl_object = ws.transport.get_extra_info("ssl_object")
    assert ssl_object is not None
    seen = ssl_object.getpeercert(binary_form=True)
    assert seen is not None
    hello = decode_relay_frame(await asyncio.wait_for(ws.recv(decode=False), WAIT))
    assert isinstance(hello, Hello)
    return ws, hello, spki_sha256(seen)


def _auth(account: TestAccount, hello: Hello, spki: bytes | None) -> bytes:
    device = account.devices[0].device
    signature = sign_relay_auth(
        device.signing,
        origin=ORIGIN,
        user_id=device.user_id,
        device_id=device.device_id,
        nonce=hello.nonce,
        spki_sha256=spki,
    )
    return Auth(device.user_id, device.device_id, signature).to_bytes()


@pytest.mark.asyncio
async def test_auth_names_the_certificate_the_handshake_presented(tmp_path: Path) -> None:
    cert, key, der = _self_signed(tmp_path, "relay")
    _, _, interceptor_der = _self_signed(tmp_path, "interceptor")
    settings = relay_settings(tls_cert=cert, tls_key=key)
    assert settings.effective_spki_binding == "relay"
    async with running_relay(settings) as relay:
        account = make_account()
        # The relay serves TLS only: register over HTTPS.
        context = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{relay.port}", verify=context, timeout=WAIT
        ) as http:
            client = RelayClient(relay.port)
            nonce_response = await http.post("/v1/register/nonce")
            assert nonce_response.status_code == 200
            value = cbor.decode(nonce_response.content)
            assert isinstance(value, dict)
            nonce = value[0]
            assert isinstance(nonce, bytes)
            body = client.register_body(account, nonce).to_bytes()
            registered = await http.post(
                "/v1/register", content=body, headers={"content-type": "application/cbor"}
            )
            assert registered.status_code == 201, registered.text

        # The right hash: the one of the certificate this handshake presented.
        ws, hello, spki = await _open_tls(relay.port, cert)
        assert spki == spki_sha256(der)
        await ws.send(_auth(account, hello, spki))
        assert isinstance(decode_relay_frame(await ws.recv(decode=False)), AuthOk)
        await ws.close()

        # A statement naming another certificate's key (what a device behind an
        # interception proxy would sign) is refused, and so is one naming none.
        for wrong in (spki_sha256(interceptor_der), None):
            ws, hello, _ = await _open_tls(relay.port, cert)
            await ws.send(_auth(account, hello, wrong))
            answer = decode_relay_frame(await ws.recv(decode=False))
            assert isinstance(answer, Error)
            assert answer.code is ErrorCode.AUTH_FAILED
            async with asyncio.timeout(WAIT):
                while True:
                    try:
                        await ws.recv()
                    except ConnectionClosed:
                        break
            assert ws.close_code == CloseCode.AUTH_FAILED
