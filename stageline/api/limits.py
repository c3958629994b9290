"""Bounds on numbers taken from requests."""

MAX_POSITION = 2**53 - 1
"""Largest log position or stream version a request may name (Lua numbers are doubles,
Redis stream ids 64-bit): a larger one is a 400, never a server error."""
