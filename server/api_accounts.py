"""Registration over HTTP (DESIGN 4.2, 5; issue 3 "Protocol").

``POST /v1/register/nonce`` issues a fresh 32-byte nonce (single use, 30 s);
``POST /v1/register`` takes a :class:`e2ee.relay_frames.RegisterRequest`
(``application/cbor``): the first signed device list (version 1, exactly one
device, no ``prev_hash``), the nonce, and signatures by the master key and by the
device's signing key over the ``register`` statement (proof of possession of both).
Bodies are CBOR; errors are JSON from the one refusal table (:mod:`server.errors`).
"""

from __future__ import annotations

import hmac
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from e2ee import cbor
from e2ee.device_list import SignedDeviceList
from e2ee.relay_frames import RegisterRequest, verify_register

from . import limits
from .context import RelayContext
from .errors import AuthFailed, Forbidden, InvalidRequest
from .http import CBORResponse, read_body
from .storage.base import AccountRecord, DeviceRecord

__all__ = ["REGISTER_PURPOSE", "register_account", "routes"]

REGISTER_PURPOSE: Final = "register"
"""The nonce purpose of registrations (nonces of one purpose never serve another)."""


async def register_account(ctx: RelayContext, body: bytes) -> AccountRecord:
    """Check a registration body and create the account (DESIGN 4.2).

    Raises:
        DecodeError: the body or the device list is malformed.
        BadSignature: the device list or a register signature does not verify.
        InvalidRequest: not version 1 with exactly one device.
        Forbidden: a registration token is required and this one is wrong.
        AuthFailed: the nonce is unknown, expired or used.
        AccountExists: the user id is taken.
        StorageUnavailable: storage failed (nothing was created).
    """
    request = RegisterRequest.from_bytes(body)
    expected = ctx.settings.registration_token
    if expected is not None:
        offered = (request.registration_token or "").encode()
        if not hmac.compare_digest(offered, expected.get_secret_value().encode()):
            raise Forbidden("registration token missing or wrong")
    signed = SignedDeviceList.from_bytes(request.signed_list)
    statement = signed.statement
    if statement.version != 1 or statement.prev_hash is not None:
        raise InvalidRequest("the first device list must be version 1 without prev_hash")
    if len(statement.devices) != 1:
        raise InvalidRequest("the first device list must hold exactly one device")
    device = statement.devices[0]
    verify_register(
        statement.master_pk,
        request.master_signature,
        statement.user_id,
        device.device_id,
        request.nonce,
    )
    verify_register(
        device.signing_pk,
        request.device_signature,
        statement.user_id,
        device.device_id,
        request.nonce,
    )
    if not await ctx.storage.nonces.consume(request.nonce, REGISTER_PURPOSE, ctx.now_ms()):
        raise AuthFailed("registration nonce unknown, expired or already used")
    account = AccountRecord(
        user_id=statement.user_id,
        master_pk=statement.master_pk,
        list_version=1,
        signed_list=signed.to_bytes(),
        list_digest=signed.digest,
        devices=(
            DeviceRecord(
                statement.user_id, device.device_id, device.signing_pk, device.x25519_ik, device.pq
            ),
        ),
    )
    await ctx.storage.accounts.create_account(account, ctx.now_ms())
    return account


def routes(ctx: RelayContext) -> list[BaseRoute]:
    """``POST /v1/register/nonce`` and ``POST /v1/register``."""

    async def register_nonce(request: Request) -> Response:
        """
        summary: Issue a registration nonce (32 bytes, single use, valid 30 s).
        description: Answers CBOR {0 nonce, 1 lifetime in ms}. Rate limited per client IP.
        responses:
          200:
            description: the nonce (application/cbor)
          429:
            description: rate limited
        """
        ctx.limiters.http.check(ctx.client_ip(request.client))
        nonce = ctx.rng(limits.NONCE_SIZE)
        await ctx.storage.nonces.issue(nonce, REGISTER_PURPOSE, ctx.now_ms() + limits.NONCE_TTL_MS)
        return CBORResponse(cbor.encode({0: nonce, 1: limits.NONCE_TTL_MS}))

    async def register(request: Request) -> Response:
        """
        summary: Create an account with its first signed device list.
        description: >-
          Body application/cbor RegisterRequest (e2ee/relay_frames.py), at most
          256 KiB. Rate limited per client IP; an operator may require a
          registration token.
        responses:
          201:
            description: created; CBOR {0 user_id, 1 device_id}
          400:
            description: malformed body, bad signature or not a first device list
          401:
            description: nonce unknown, expired or used
          403:
            description: registration token missing or wrong
          409:
            description: the user id is taken
          413:
            description: body too large
          429:
            description: rate limited
        """
        ctx.limiters.registration.check(ctx.client_ip(request.client))
        body = await read_body(request, limits.MAX_REGISTER_BODY, "registration body")
        account = await register_account(ctx, body)
        return CBORResponse(
            cbor.encode({0: account.user_id, 1: account.devices[0].device_id}), status_code=201
        )

    return [
        Route("/v1/register/nonce", register_nonce, methods=["POST"]),
        Route("/v1/register", register, methods=["POST"]),
    ]
