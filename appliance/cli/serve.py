"""`rdr serve`: run the appliance daemon (the systemd unit's command); `rdr init`: create
its store without starting it. The only two commands that create a store."""

from __future__ import annotations

from .core import Context, Parents, Subparsers, command


def serve(ctx: Context) -> int:
    import asyncio

    from rdr_agent.util.memory import tune_malloc

    from ..daemon import serve as run_daemon

    # Chunk buffers from one arena's heap, reused (rdr_agent/util/memory.py says why).
    tune_malloc()
    asyncio.run(run_daemon(ctx.cfg))
    return 0


def init(ctx: Context) -> int:
    """Create the store where the config says (hosts and accounts can then be added before
    the first `rdr serve`); an existing store is left as it is."""
    existed = (ctx.cfg.data_dir / "index.sqlite").exists()
    with ctx.stored(create=True):
        pass
    print(f"appliance store {'already at' if existed else 'created at'} {ctx.cfg.data_dir}")
    return 0


def add_serve(sub: Subparsers, common: Parents) -> None:
    command(sub, "serve", serve, "run the appliance daemon (creates its store if missing)",
            common, {0: "the daemon stopped (SIGTERM or SIGINT)"})


def add_init(sub: Subparsers, common: Parents) -> None:
    command(sub, "init", init, "create the appliance's store without starting the daemon",
            common, {0: "the store exists (created now or already there)"})


#: The top-level commands this module adds, by name.
PARSERS = {"serve": add_serve, "init": add_init}
