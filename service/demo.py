"""`make demo`: the whole procedure for rob@contoso.com against the sandbox tenant.

The engine that runs cases is not built yet; until it is, the demo says so plainly rather
than pretending.
"""

from __future__ import annotations

import sys


def main() -> int:
    sys.stderr.write(
        "make demo: the case engine (sandbox tenant, PowerShell bridge, worker) is not built yet.\n"
        "What exists now: `unblock migrate`, `unblock serve` (health and readiness), `unblock keys`.\n"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
