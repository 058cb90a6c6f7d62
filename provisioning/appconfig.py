"""The appliance's TOML config, rendered from the order and checked by the daemon's own loader.

Rendering is deterministic (same order, same bytes), which is what makes the step idempotent:
an unchanged file is recognised by comparing bytes. The file holds the S3 secret, so it is
written 0600 for the daemon's user.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from appliance.config import ConfigError, load

from . import layout
from .order import Order


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def _section(name: str, values: dict[str, object]) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {_value(v)}\n" for k, v in values.items())


def render(order: Order) -> str:
    sections = {
        "server": {"listen": order.listen, "tls_cert": str(layout.TLS_CERT),
                   "tls_key": str(layout.TLS_KEY)},
        "store": {"path": str(layout.DATA_POOL)},
        "appliance": {"serial": order.serial, "timezone": order.timezone},
        "retention": {"policy": order.retention},
        "capacity": {"installed_gb": float(order.capacity_gb)},
        "contract": {"commitment_months": order.commitment_months,
                     "default_window": order.default_window,
                     **({"terms_file": str(layout.CONTRACT)} if order.contract else {})},
        "datacenter": {"probe": order.probe},
        "replication": {"enabled": True, "target": "s3", "endpoint": order.s3_endpoint,
                        "bucket": order.bucket, "access_key": order.access_key,
                        "secret_key": order.secret_key, "region": order.region,
                        "key_file": str(layout.REPLICATION_KEY),
                        "tunnel_subnet": order.tunnel_subnet},
    }
    head = (f"# RDR appliance {order.serial} (customer {order.customer_id}), written by "
            "provisioning.\n# Holds the S3 secret: keep it 0600. Re-run provisioning with "
            "--force to regenerate.\n")
    return head + "\n".join(_section(k, v) for k, v in sections.items())


def render_contract(order: Order) -> str | None:
    """The contract file (JSON, sorted keys: same order, same bytes), or None without one."""
    if order.contract is None:
        return None
    return json.dumps(order.contract, sort_keys=True, indent=1) + "\n"


def check(text: str) -> None:
    """Load TEXT with the daemon's loader (raises ConfigError with the key on a problem)."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(text)
        f.flush()
        load(Path(f.name))


__all__ = ["ConfigError", "check", "render"]
