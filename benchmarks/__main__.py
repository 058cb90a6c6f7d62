"""`python -m benchmarks replication [--mb N] [--runs N]` | `browse [--files N] [--runs N]`"""

from __future__ import annotations

import sys


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("replication", "browse"):
        print("usage: python -m benchmarks replication [--mb N] [--runs N]\n"
              "       python -m benchmarks browse [--files N] [--per-dir N] [--runs N]",
              file=sys.stderr)
        return 2
    if sys.argv[1] == "browse":
        from . import browse

        return browse.main(sys.argv[2:])
    from . import replication_tunnel

    return replication_tunnel.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
