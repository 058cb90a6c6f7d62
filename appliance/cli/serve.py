"""`rdr serve`: run the appliance daemon (the systemd unit's command)."""

from __future__ import annotations

from .core import Context, Parents, Subparsers, command


def serve(ctx: Context) -> int:
    import asyncio

    from rdr_agent.util.memory import tune_malloc

    from ..daemon import serve as run_daemon

    # One arena: the daemon's workers hand buffers to the event loop and back, and with
    # 20 agents a second arena only added fragmentation (peak RSS ~201 -> ~196 MiB).
    tune_malloc(arenas=1)
    asyncio.run(run_daemon(ctx.cfg))
    return 0


def add_serve(sub: Subparsers, common: Parents) -> None:
    command(sub, "serve", serve, "run the appliance daemon", common,
            {0: "the daemon stopped (SIGTERM or SIGINT)"})


#: The top-level commands this module adds, by name.
PARSERS = {"serve": add_serve}
