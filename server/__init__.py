"""Relay server (see issue 3); nothing here yet."""
