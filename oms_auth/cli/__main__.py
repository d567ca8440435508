"""``python -m oms_auth.cli``: the ``oms-auth`` command."""

import contextlib
import sys

from . import main

with contextlib.suppress(KeyboardInterrupt):
    sys.exit(main())
