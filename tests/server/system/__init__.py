"""System tests of the relay (issue 3, "What the tests must show"): real relay
processes (``e2ee serve``) or a real in-process uvicorn, real WebSocket clients, SQLite
files and the real PostgreSQL (and Redis where it is used)."""
