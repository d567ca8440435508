"""The transport: a thin websockets adapter over the engine, and the HTTP pages beside it."""
