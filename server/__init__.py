"""The relay server (issue 3; DESIGN 5): ``create_app`` in :mod:`server.app`,
``e2ee serve`` in :mod:`server.cli`, the protocol in :mod:`server.session`, storage in
:mod:`server.storage`, notification fan-out in :mod:`server.notify`."""
