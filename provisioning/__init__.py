"""Pre-shipping provisioning of an RDR appliance (run by a factory technician).

`python -m provisioning --order ORDER.toml --ca-cert CA.pem --ca-key CA.key --dc-key DC.pem`
gives a unit (or, with ``--root DIR``, an image tree) everything it needs to boot straight
into a working service: a burnt-in data disk, a device key and certificate signed by the
factory CA, the strongSwan configuration of its tunnel, the replication data key (escrowed to
the data center), the appliance config, an initial admin account and a provisioning record
for the data center. Every step is idempotent: re-running changes nothing unless ``--force``.
"""

__version__ = "0.1.0"
