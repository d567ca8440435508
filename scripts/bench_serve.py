"""Runs ``oms-auth`` for the benchmark: the real CLI, on a chosen event loop, with the open-file
limit raised (5,000 idle connections need more than the usual 1,024).

    python -m scripts.bench_serve --loop asyncio|uvloop -- serve --port 0 --db ... --mail ...

The CLI picks uvloop whenever it is importable; ``--loop asyncio`` hides it so the stock loop
runs instead. Everything after ``--`` goes to ``oms_auth.cli.main`` unchanged.
"""

from __future__ import annotations

import sys

from ._bench_util import raise_nofile

__all__ = ["main"]


def main() -> int:
    argv = sys.argv[1:]
    if "--" in argv:
        cut = argv.index("--")
        ours, theirs = argv[:cut], argv[cut + 1 :]
    else:
        ours, theirs = [], argv
    loop = "uvloop"
    if ours[:1] == ["--loop"] and len(ours) == 2:
        loop = ours[1]
    elif ours:
        print(f"usage: {__doc__}", file=sys.stderr)
        return 2
    if loop == "asyncio":
        sys.modules["uvloop"] = None  # type: ignore[assignment]  # import uvloop -> ImportError
    raise_nofile()
    from oms_auth.cli import main as cli_main

    return cli_main(theirs)


if __name__ == "__main__":
    sys.exit(main())
