"""Relay server (issue 3): so far the notification fan-out between nodes (``server.notify``)."""
