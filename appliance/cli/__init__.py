"""`rdr`: the appliance's admin command. Thin: parses, calls the store, prints.

One module per command group (`hosts`, `maintenance`, `replication`, `dc`, `seed`, `access`,
`status`, `usage`, `serve`), the parser's skeleton and `main` in `app`, and in `core` what
they share: the exit codes each command's `--help` lists, the one mapping of errors to exit
codes (every failure is one line on stderr and a non-zero exit; no traceback reaches the
admin), the context a command runs in and the output helpers.
"""

from .app import build_parser, main
from .core import exit_codes

__all__ = ["build_parser", "exit_codes", "main"]
