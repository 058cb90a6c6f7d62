"""strongSwan configuration of the appliance's tunnel to the data center (swanctl format).

The appliance is the IKEv2 initiator: it authenticates with its device certificate, accepts
only a data-center gateway whose certificate the factory CA signed for the identity named in
the order, and keeps the tunnel up by itself (start at load, restart after a dead-peer
detection or a close, retry forever). Only the appliance's tunnel address talks to the data
center's subnets; `tunnel.env` lets rdr-tunnel-guard.service put that address on ``lo`` and a
``prohibit`` route on every remote subnet before strongSwan starts, so while the SA is down
that traffic fails at once instead of leaving in plaintext.
"""

from __future__ import annotations

import ipaddress

from .order import Order

CONNECTION = "rdr-dc"
IKE_PROPOSALS = "aes256gcm16-prfsha384-ecp384,aes128gcm16-prfsha256-ecp256"
ESP_PROPOSALS = "aes256gcm16,aes128gcm16"


def swanctl_conf(order: Order, cert_name: str, ca_name: str) -> str:
    """conf.d/rdr.conf for /etc/swanctl (cert and CA file names are relative to x509/ and
    x509ca/)."""
    local_ts = str(ipaddress.ip_interface(order.tunnel_address).network)
    encap = "yes" if order.userspace_esp else "no"
    return f"""\
# Written by RDR provisioning for {order.serial}; re-run provisioning with --force to change.
connections {{
    {CONNECTION} {{
        version = 2
        remote_addrs = {order.dc_gateway}
        proposals = {IKE_PROPOSALS}
        # forced UDP encapsulation: needed by the userspace ESP backend, else NAT-T decides
        encap = {encap}
        mobike = no
        dpd_delay = 10s
        keyingtries = 0
        local {{
            auth = pubkey
            certs = {cert_name}
            id = {order.identity}
        }}
        remote {{
            auth = pubkey
            id = {order.dc_identity}
            cacerts = {ca_name}
        }}
        children {{
            {CONNECTION} {{
                mode = tunnel
                local_ts = {local_ts}
                remote_ts = {",".join(order.remote_subnets)}
                esp_proposals = {ESP_PROPOSALS}
                start_action = start
                dpd_action = restart
                close_action = start
            }}
        }}
    }}
}}
"""


def userspace_esp_conf() -> str:
    """strongswan.d snippet for kernels without xfrm: charon's userspace ESP backend
    (kernel-libipsec, a TUN device ipsec0) loaded before kernel-netlink."""
    return """\
# Written by RDR provisioning: this kernel has no IPsec (xfrm), use userspace ESP.
charon {
    plugins {
        kernel-libipsec {
            load = 10
        }
    }
}
"""


def tunnel_env(order: Order) -> str:
    """Read by rdr-tunnel-guard.service (EnvironmentFile=)."""
    return (f"RDR_TUNNEL_ADDRESS={order.tunnel_address}\n"
            f"RDR_TUNNEL_PROHIBIT=\"{' '.join(order.remote_subnets)}\"\n")
