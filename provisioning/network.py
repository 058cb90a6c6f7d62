"""The appliance's LAN settings: a static address from the order, or DHCP (the image default).

systemd-networkd reads /etc/systemd/network in lexical order and the first file that matches
a link configures it, so the provisioned 10-rdr-lan.network takes precedence over the
image's 80-rdr-lan.network (DHCP) for the same ports.
"""

from __future__ import annotations

from .order import Order

MATCH = "en* eth*"


def lan_network(order: Order) -> str | None:
    """The .network file for a static LAN, or None when the order leaves the LAN to DHCP."""
    if not order.lan_address:
        return None
    lines = ["# Written by RDR provisioning: the LAN's static settings from the order.",
             "[Match]", f"Name={MATCH}", "", "[Network]", f"Address={order.lan_address}"]
    if order.lan_gateway:
        lines.append(f"Gateway={order.lan_gateway}")
    lines += [f"DNS={d}" for d in order.lan_dns]
    return "\n".join(lines) + "\n"
