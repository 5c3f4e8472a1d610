"""Running the relay app under uvicorn, as ``e2ee serve`` and the tests do.

:func:`uvicorn_config` pins what the relay depends on: the ``websockets-sansio``
WebSocket implementation, per-message compression off (ciphertext does not
compress, and compression is a memory and CPU cost per socket), ``ws_max_size =
MAX_FRAME`` (a bigger message is closed with 1009 before it is buffered) and the
lifespan on. :class:`RelayServer` closes every socket with ``GOING_AWAY`` before
uvicorn's own shutdown would close them with 1012.
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn
from starlette.applications import Starlette

from e2ee.relay_frames import CloseCode

from . import limits
from .context import RelayContext
from .settings import RelaySettings

__all__ = ["RelayServer", "uvicorn_config"]


def uvicorn_config(app: Starlette, settings: RelaySettings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration of the relay app ``app`` under ``settings``."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "ws": "websockets-sansio",
        "ws_per_message_deflate": False,
        "ws_max_size": limits.MAX_FRAME,
        "lifespan": "on",
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": limits.SHUTDOWN_CLOSE_SECONDS * 2,
        "server_header": False,
    }
    if settings.tls_cert is not None and settings.tls_key is not None:
        options["ssl_certfile"] = str(settings.tls_cert)
        options["ssl_keyfile"] = str(settings.tls_key)
    options.update(overrides)
    return uvicorn.Config(app, **options)


class RelayServer(uvicorn.Server):
    """A uvicorn server that closes the relay's sockets with ``GOING_AWAY`` first."""

    def __init__(self, config: uvicorn.Config, ctx: RelayContext) -> None:
        super().__init__(config)
        self.relay_ctx = ctx

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, close every WebSocket with ``GOING_AWAY`` (bounded), then
        uvicorn's shutdown (which waits for the rest and runs the lifespan's end)."""
        for server in self.servers:
            server.close()
        await self.relay_ctx.hub.close_all(
            CloseCode.GOING_AWAY, "relay shutting down", limits.SHUTDOWN_CLOSE_SECONDS
        )
        await super().shutdown(sockets)

    @property
    def bound_port(self) -> int:
        """The TCP port the server listens on (after startup; useful with port 0)."""
        for server in self.servers:
            for sock in server.sockets:
                port: int = sock.getsockname()[1]
                return port
        raise RuntimeError("the server is not listening")
