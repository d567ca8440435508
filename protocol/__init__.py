"""The OMS frame protocol, sans-I/O: bytes in, typed messages out.

Nothing in this package touches the network except :mod:`protocol.client`, the small asyncio client
that tests, scripts and the conformance kit share.
"""
