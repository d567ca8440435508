"""The cases, in the contract's order: frames, logging in, HTTP keep-alive, resets, the account
functions, recovery.
Each opens its own connections and states what it checks.

Importing this package registers them into :data:`..registry.CASES`, module by module in the
order imported below (the order the kit runs and reports them).
"""

from . import frames, logins, keepalive, resets, accounts, recovery, devices  # noqa: F401, I001  (the order is the run order)

__all__: list[str] = []
