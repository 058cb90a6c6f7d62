"""The appliance's network ports: the LAN (a static address from the order, or DHCP, the
image default) and, when the order names one, a WAN port of its own for the tunnel.

systemd-networkd reads /etc/systemd/network in lexical order and the first file that matches
a link configures it, so the provisioned 05-rdr-wan.network claims the WAN port before
10-rdr-lan.network (static LAN) or the image's 80-rdr-lan.network (DHCP), which match every
``en*``/``eth*`` port, can: without it, the WAN port would be configured as a second LAN
port (with the LAN's static address, or by DHCP from the wrong network).
"""

from __future__ import annotations

from .order import Order

MATCH = "en* eth*"


def _network(comment: str, match: str, address: str, gateway: str, dns: list[str]) -> str:
    lines = [f"# Written by RDR provisioning: {comment}", "[Match]", f"Name={match}", "",
             "[Network]"]
    if not address:
        lines.append("DHCP=yes")
    else:
        lines.append(f"Address={address}")
        if gateway:
            lines.append(f"Gateway={gateway}")
        lines += [f"DNS={d}" for d in dns]
    return "\n".join(lines) + "\n"


def lan_network(order: Order) -> str | None:
    """The .network file for a static LAN, or None when the order leaves the LAN to DHCP."""
    if not order.lan_address:
        return None
    return _network("the LAN's static settings from the order.", MATCH, order.lan_address,
                    order.lan_gateway, order.lan_dns)


def wan_network(order: Order) -> str | None:
    """The .network file for the WAN port (static or DHCP), or None when the order has no
    [wan]: the tunnel then leaves through the LAN's gateway."""
    if not order.wan_interface:
        return None
    return _network("the WAN port, the tunnel's way to the data center.",
                    order.wan_interface, order.wan_address, order.wan_gateway, order.wan_dns)
