"""The bare in-memory forwarder the relay is compared with (bench/relay.py).

A Starlette app served by the same uvicorn configuration as the relay
(:func:`bench.launch.uvicorn_config`: ``websockets-sansio``, no per-message
compression). It does the least a relay must do: each binary frame a sender sends is
forwarded, as is, to the recipient of the same pair. No authentication, no storage,
no acknowledgement, no parsing of the frame.

WebSocket ``/fwd?pair=K&role=recv|send|idle``:

* ``recv``: registers the connection as pair K's recipient and waits (its frames, if
  any, are ignored);
* ``send``: every binary frame is forwarded to pair K's recipient (dropped, and
  counted, while there is none);
* ``idle``: accepted and left waiting in ``receive()``: the "bare Starlette idle
  socket" of the memory-per-connection measurement.

``GET /healthz`` answers ``ok`` (the launcher's readiness probe).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

__all__ = ["WS_PATH", "create_forwarder_app"]

WS_PATH = "/fwd"


def create_forwarder_app() -> Starlette:
    """The forwarder: a Starlette app with one WebSocket route and a health probe."""
    recipients: dict[str, WebSocket] = {}
    dropped = [0]

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"ok dropped={dropped[0]}")

    async def endpoint(websocket: WebSocket) -> None:
        pair = websocket.query_params.get("pair", "")
        role = websocket.query_params.get("role", "idle")
        await websocket.accept()
        try:
            if role == "send":
                while True:
                    data = await websocket.receive_bytes()
                    peer = recipients.get(pair)
                    if peer is None:
                        dropped[0] += 1
                    else:
                        await peer.send_bytes(data)
            else:
                if role == "recv":
                    recipients[pair] = websocket
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        return
        except WebSocketDisconnect:
            return
        finally:
            if role == "recv" and recipients.get(pair) is websocket:
                del recipients[pair]

    return Starlette(
        routes=[Route("/healthz", healthz), WebSocketRoute(WS_PATH, endpoint)],
    )
