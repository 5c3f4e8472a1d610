"""Alembic migrations of the relay's schema (:mod:`server.storage.schema`).

Shipped inside the package, so they run from an installed wheel:
:mod:`server.storage.migrate` points Alembic's ``script_location`` at this directory
programmatically (there is no ``alembic.ini``). A new revision, from the repository
root::

    python -m server.storage.migrate revision "what changed"
"""
