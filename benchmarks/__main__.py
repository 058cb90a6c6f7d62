"""`python -m benchmarks COMMAND`: run | scale | replication | browse | load | commitsync |
ransomware | startup | agentgc | restorefs (each has --help)."""

from __future__ import annotations

import sys

USAGE = """usage: python -m benchmarks run [--quick] [--size 10G] [--data PATH] [--runs N]
                                [--tools A,B,..]
       python -m benchmarks scale [--chunks N]
       python -m benchmarks replication [--mb N] [--runs N]
       python -m benchmarks browse [--files N] [--per-dir N] [--runs N]
       python -m benchmarks load [--agents N] [--restores N] [--size-mb N]
       python -m benchmarks commitsync [--mb N] [--rate MBPS] [--runs N] [--work DIR]
       python -m benchmarks ransomware [--size-mb N] [--chroot NAME BEFORE AFTER]
       python -m benchmarks startup [--runs N]
       python -m benchmarks agentgc [--size 10G] [--thresholds 700,10000]
       python -m benchmarks restorefs [--size 1G] [--runs 3] [--tools A,B,..]"""


def main() -> int:
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    argv = sys.argv[2:]
    if cmd == "run":
        from . import run

        return run.main(argv)
    if cmd == "scale":
        from . import scale

        return scale.main(argv)
    if cmd == "browse":
        from . import browse

        return browse.main(argv)
    if cmd == "load":
        from . import load

        return load.main(argv)
    if cmd == "commitsync":
        from . import commitsync

        return commitsync.main(argv)
    if cmd == "ransomware":
        from . import ransomware

        return ransomware.main(argv)
    if cmd == "startup":
        from . import startup

        return startup.main(argv)
    if cmd == "agentgc":
        from . import agentgc

        return agentgc.main(argv)
    if cmd == "restorefs":
        from . import restorefs

        return restorefs.main(argv)
    if cmd == "replication":
        from . import replication_tunnel

        return replication_tunnel.main(argv)
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
