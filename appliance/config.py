"""Appliance configuration: TOML, typed sections, defaults that run without any file.

Validation names the offending key (``server.listen``) so a technician editing the file on a
customer site knows what to fix; unknown keys are errors, because a typo silently ignored is a
setting silently not applied.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from rdr_agent.util.tomlfile import read_toml

from .errors import ApplianceError
from .notify.settings import NotifyConfig, parse_notify
from .timeofday import machine_zone


class ConfigError(ApplianceError, ValueError):
    """The configuration is unusable; the message names the key."""

    def __init__(self, message: str, code: str = "bad_config") -> None:
        super().__init__(code, message)


@dataclass(slots=True)
class ServerConfig:
    #: LAN listeners, "host:port" ("[::1]:8443" for IPv6).
    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:8443"])
    #: Provisioned certificate and key (PEM). Empty: a self-signed pair under the data dir.
    tls_cert: str = ""
    tls_key: str = ""
    #: Largest JSON request body (known-chunk batches, commits).
    max_json_bytes: int = 32 * 1024 * 1024
    #: Seconds in-flight requests get to finish on shutdown.
    shutdown_grace_seconds: float = 10.0
    #: A connection must finish its TLS handshake, and then send complete request headers,
    #: within this many seconds (also the idle keep-alive limit between requests): a client
    #: holding many half-open connections (slowloris) cannot keep them. Above the agents'
    #: 15 s client keep-alive, so an agent never reuses a connection the daemon just closed.
    header_timeout_seconds: float = 20.0


def default_data_dir() -> str:
    """The embedded default's data directory: absolute, and the same from every working
    directory, so `rdr` finds the store `rdr serve` uses wherever the admin stands
    (`/var/lib/rdr` as root; otherwise `$XDG_STATE_HOME/rdr`, `~/.local/state/rdr` when
    that is unset or not absolute, per the XDG base directory spec)."""
    if os.geteuid() == 0:
        return "/var/lib/rdr"
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state"
    return str(base / "rdr")


@dataclass(slots=True)
class StoreConfig:
    #: The data directory; a relative path in a file is taken from the file's directory.
    path: str = field(default_factory=default_data_dir)
    #: An open session unused this long may be taken over by a new backup of its host.
    session_lease_seconds: float = 60.0
    #: Threads for disk and CPU work (hashing, zstd, fsync) off the event loop.
    workers: int = 4
    #: Backups taken at once (0 = no limit). More agents wait for a slot (503 "busy", the
    #: agent retries): at 5 pm every agent of a site starts together, and taking them all at
    #: once only makes each request wait longer in the queue for the same CPU.
    max_active_backups: int = 8
    #: Space kept in reserve so prune and GC work on a full disk; new backups are refused
    #: (507) once free space falls to it.
    reserve_mb: int = 64


@dataclass(slots=True)
class LimitsConfig:
    """What one client may make the appliance do at once (docs/SECURITY.md, "No single
    client starves the appliance"). `store.workers` sizes the light pool (token checks,
    probes, agents' small calls, uploads); heavy work has its own threads."""

    #: Threads for heavy work: downloads, listings, catalog decoding, sign-in hashing,
    #: maintenance jobs, replication reads.
    heavy_workers: int = 2
    #: Heavy operations one host or account runs at once, downloads and browsing (listings,
    #: searches, lookups) counted apart; more are refused with 429 and Retry-After (0 = no
    #: limit).
    heavy_per_principal: int = 2
    #: Heavy operations the appliance runs at once; more are refused with 503 (0 = no limit).
    heavy_total: int = 6
    #: Memory for decoded directory listings (an estimate of their size in memory).
    listing_cache_mb: int = 32
    #: A snapshot may hold catalog_free_entries entries, plus one per catalog_bytes_per_entry
    #: bytes its host has uploaded (all its committed backups, pruned ones included, and this
    #: one), and never more than catalog_max_entries. A million empty files fit for free.
    catalog_free_entries: int = 2_000_000
    catalog_bytes_per_entry: int = 64
    catalog_max_entries: int = 50_000_000
    #: A commit whose catalog is identical to one of its host's snapshots made this recently
    #: returns that snapshot instead of minting another (0 = always a new snapshot).
    recommit_interval_seconds: float = 3600.0


@dataclass(slots=True)
class RetentionConfig:
    #: Default schedule for hosts without their own ("D-W-M": 8-5-4, 30-0-0, 7-0-0).
    policy: str = "8-5-4"


@dataclass(slots=True)
class MaintenanceConfig:
    """How often the daemon runs each job (hours; 0 turns the schedule off)."""

    prune_interval_hours: float = 24.0
    gc_interval_hours: float = 24.0
    #: Unreferenced chunks younger than this are left for the next run.
    gc_grace_minutes: float = 60.0
    #: Open sessions older than this whose agent is gone are aborted by GC.
    stale_session_hours: float = 72.0
    verify_interval_hours: float = 24.0
    verify_sample_percent: float = 10.0
    verify_rate_mb: float = 50.0


@dataclass(slots=True)
class ApplianceConfig:
    serial: str = "unprovisioned"
    #: The zone of the windows, retention's days and the page's times (IANA name);
    #: "" or unset = the machine's own (TZ, /etc/localtime; UTC when neither says).
    timezone: str = field(default_factory=machine_zone)


@dataclass(slots=True)
class CapacityConfig:
    #: Installed (contracted) capacity in GB (10^9 bytes); 0 = the data disk's size.
    installed_gb: float = 0.0
    #: Warning levels and the hard level, in percent of the data disk.
    warn_percent: list[float] = field(default_factory=lambda: [80.0, 90.0])
    hard_percent: float = 95.0
    #: Hours between usage samples (kept for 36 months).
    sample_interval_hours: float = 24.0


@dataclass(slots=True)
class ContractConfig:
    commitment_months: int = 12
    #: Daily backup window start (appliance time zone), 12 hours long; per host overridable.
    default_window: str = "17:00"
    #: Scheduled backups start up to this many seconds after the window opens (a delay per
    #: host and day, so the hosts of a site do not all start in the same second).
    schedule_jitter_seconds: int = 600
    #: How often the backup scheduler looks for opened and closed windows.
    schedule_tick_seconds: float = 30.0
    #: The provisioned contract file ([terms] and [rate_card], provisioning/
    #: contract.example.toml); empty = no monthly statement (issue 24).
    terms_file: str = ""
    #: The provider allows retentions other than the contract's 8-5-4, 30-0-0 and 7-0-0.
    allow_custom_retention: bool = False
    #: Hours between the daemon's looks for a closed month to store (0: only when read).
    statement_close_hours: float = 6.0


@dataclass(slots=True)
class DatacenterConfig:
    #: "host:port" probed with a TCP connect for the round-trip time; empty = no probe.
    probe: str = ""
    probe_interval_seconds: float = 300.0


@dataclass(slots=True)
class ReplicationConfig:
    """Replication to the data center. The embedded default replicates to a local directory
    standing in for the data center, with a key generated at first start."""

    enabled: bool = True
    #: "dir" (a local directory) or "s3" (the data center's S3 store through the tunnel).
    target: str = "dir"
    directory: str = "./rdr-dc"
    endpoint: str = ""
    bucket: str = "rdr"
    access_key: str = ""
    secret_key: str = ""
    region: str = "us-east-1"
    #: The per-appliance data key (64 hex digits, 0600); empty = <data dir>/replication.key.
    key_file: str = ""
    concurrency: int = 4
    #: Attempts per request on transient errors (outages are waited out by the next pass).
    retries: int = 6
    #: Upload limit in kbit/s (0 = none), and per time-of-day overrides "HH:MM-HH:MM=KBITS".
    bandwidth_kbps: float = 0.0
    bandwidth_schedule: list[str] = field(default_factory=list)
    #: Only replicate inside this daily window "HH:MM-HH:MM" (empty = any time).
    window: str = ""
    interval_seconds: float = 300.0
    #: Watch the IPsec tunnel: its remote subnet's route in table 220 must exist to send.
    tunnel_subnet: str = ""
    vici_socket: str = ""
    #: Object Lock (a bucket created with it, `rdr dc create-bucket`): each object is locked
    #: in compliance mode until its generation's end + the retention horizon + this margin;
    #: objects written within one generation share their date and are extended together
    #: (docs/IMMUTABILITY.md). Horizon 0 = from the retention policies in use.
    lock_margin_days: float = 30.0
    lock_generation_days: float = 10.0
    lock_horizon_days: float = 0.0


@dataclass(slots=True)
class HealthConfig:
    #: /metrics needs an admin API token (Prometheus: `authorization: credentials`).
    metrics_require_token: bool = True
    #: Interfaces whose link state is watched (empty = every non-loopback one).
    interfaces: list[str] = field(default_factory=list)
    #: Watch the data disk (pyudev); off only for tests on filesystems without a device.
    watch_disks: bool = True


@dataclass(slots=True)
class SeedConfig:
    #: Where inserted Rapid Protect / Rapid Recover disks are mounted (read-only until an
    #: operation is armed), one directory per kernel device name.
    mount_root: str = "/run/rdr/disks"


@dataclass(slots=True)
class DetectionConfig:
    """Ransomware detection at ingest (appliance/detect/rules.py says what each means;
    docs/RANSOMWARE.md the false-positive figures behind the defaults)."""

    enabled: bool = True
    #: Clean snapshots of a source kept before a suspicious one until an admin lifts the hold.
    hold_clean: int = 3
    #: The agent's commit answer waits at most this long for the verdict (judging goes on).
    answer_within_seconds: float = 20.0
    min_files: int = 20
    changed_share: float = 0.5
    rewritten_share: float = 0.3
    extension_min_files: int = 20
    extension_share: float = 0.1
    entropy_jump: float = 0.25
    entropy_min_bytes: int = 1024 * 1024
    notes_min: int = 1
    min_signals: int = 2


@dataclass(slots=True)
class EnrolConfig:
    #: The agent's wheelhouse, collected when the image is built (image/wheelhouse.py):
    #: served to enrolling hosts, which need no internet (docs/ENROLMENT.md).
    wheelhouse: str = "/usr/share/rdr/wheelhouse"
    #: How customers' hosts reach the appliance ("https://10.0.0.5:8443"), used in the
    #: enrolment command `rdr hosts add` prints. Empty: the page uses the address its browser
    #: used, and `rdr` the first listener.
    url: str = ""


@dataclass(slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    appliance: ApplianceConfig = field(default_factory=ApplianceConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    maintenance: MaintenanceConfig = field(default_factory=MaintenanceConfig)
    capacity: CapacityConfig = field(default_factory=CapacityConfig)
    contract: ContractConfig = field(default_factory=ContractConfig)
    datacenter: DatacenterConfig = field(default_factory=DatacenterConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    seed: SeedConfig = field(default_factory=SeedConfig)
    #: Notification targets and timings (lists of tables: parsed by appliance/notify).
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    enrol: EnrolConfig = field(default_factory=EnrolConfig)

    @property
    def data_dir(self) -> Path:
        return Path(self.store.path).expanduser().resolve()


def _check_type(value: object, hint: object, key: str) -> object:
    if hint is float and type(value) is int:
        return float(value)
    if typing.get_origin(hint) is list:
        (inner,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return [_check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(hint, type) or type(value) is not hint:
        name = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"{key}: expected {name}, got {type(value).__name__} {value!r}")
    return value


def _load_section(cls: type, raw: object, prefix: str) -> object:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: expected a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"unknown key {prefix}.{key}")
    kwargs = {k: _check_type(v, hints[k], f"{prefix}.{k}") for k, v in raw.items()}
    return cls(**kwargs)


def parse_listen(addr: str, key: str = "server.listen") -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if (not sep or not host or not (port.isascii() and port.isdigit())
            or not 0 <= int(port) < 65536):
        raise ConfigError(f"{key}: expected HOST:PORT, got {addr!r}")
    return host.strip("[]"), int(port)


def validate(cfg: Config) -> Config:
    if not cfg.server.listen:
        raise ConfigError("server.listen: at least one address is needed")
    for addr in cfg.server.listen:
        parse_listen(addr)
    if bool(cfg.server.tls_cert) != bool(cfg.server.tls_key):
        raise ConfigError("server.tls_cert and server.tls_key must be set together")
    if cfg.server.max_json_bytes < 64 * 1024:
        raise ConfigError("server.max_json_bytes: must be at least 65536")
    if cfg.server.shutdown_grace_seconds < 0:
        raise ConfigError("server.shutdown_grace_seconds: must not be negative")
    if not 1 <= cfg.server.header_timeout_seconds <= 600:
        raise ConfigError("server.header_timeout_seconds: must be 1 to 600")
    if not cfg.store.path:
        raise ConfigError("store.path: must not be empty")
    if cfg.store.session_lease_seconds <= 0:
        raise ConfigError("store.session_lease_seconds: must be positive")
    if cfg.store.max_active_backups < 0:
        raise ConfigError("store.max_active_backups: must be 0 (no limit) or more")
    if not 1 <= cfg.store.workers <= 64:
        raise ConfigError("store.workers: must be between 1 and 64")
    if cfg.store.reserve_mb < 0:
        raise ConfigError("store.reserve_mb: must not be negative")
    _validate_limits(cfg.limits)
    d = cfg.detection
    if d.hold_clean < 1 or d.min_signals < 1 or d.min_files < 0 or d.notes_min < 1:
        raise ConfigError("detection: hold_clean, min_signals and notes_min must be at least 1")
    for key in ("changed_share", "rewritten_share", "extension_share", "entropy_jump"):
        if not 0 < getattr(d, key) <= 1:
            raise ConfigError(f"detection.{key}: must be in (0, 1]")
    from .store.retention import Policy

    try:
        Policy.parse(cfg.retention.policy)
    except ValueError as exc:
        raise ConfigError(f"retention.policy: {exc}") from None
    m = cfg.maintenance
    for key in ("prune_interval_hours", "gc_interval_hours", "gc_grace_minutes",
                "stale_session_hours", "verify_interval_hours"):
        if getattr(m, key) < 0:
            raise ConfigError(f"maintenance.{key}: must not be negative")
    if not 0 < m.verify_sample_percent <= 100:
        raise ConfigError("maintenance.verify_sample_percent: must be in (0, 100]")
    if m.verify_rate_mb <= 0:
        raise ConfigError("maintenance.verify_rate_mb: must be positive")
    c = cfg.capacity
    if c.installed_gb < 0:
        raise ConfigError("capacity.installed_gb: must not be negative")
    if not 0 < c.hard_percent <= 100:
        raise ConfigError("capacity.hard_percent: must be in (0, 100]")
    if any(not 0 < w < c.hard_percent for w in c.warn_percent):
        raise ConfigError("capacity.warn_percent: each level must be between 0 and "
                          "capacity.hard_percent")
    if c.sample_interval_hours < 0:
        raise ConfigError("capacity.sample_interval_hours: must not be negative")
    if not 0 <= cfg.contract.schedule_jitter_seconds <= 3600:
        raise ConfigError("contract.schedule_jitter_seconds: must be 0 to 3600")
    if not 0.1 <= cfg.contract.schedule_tick_seconds <= 600:
        raise ConfigError("contract.schedule_tick_seconds: must be 0.1 to 600")
    if cfg.contract.statement_close_hours < 0:
        raise ConfigError("contract.statement_close_hours: must not be negative")
    if cfg.contract.commitment_months not in (12, 36):
        raise ConfigError("contract.commitment_months: must be 12 or 36")
    from .windows import parse_window_start

    try:
        parse_window_start(cfg.contract.default_window)
    except ValueError as exc:
        raise ConfigError(f"contract.default_window: {exc}") from None
    if cfg.datacenter.probe:
        parse_listen(cfg.datacenter.probe, "datacenter.probe")
    if cfg.datacenter.probe_interval_seconds <= 0:
        raise ConfigError("datacenter.probe_interval_seconds: must be positive")
    r = cfg.replication
    if r.target not in ("dir", "s3"):
        raise ConfigError("replication.target: must be 'dir' or 's3'")
    if r.enabled and r.target == "s3":
        for key in ("endpoint", "bucket", "access_key", "secret_key"):
            if not getattr(r, key):
                raise ConfigError(f"replication.{key}: required when replication.target = 's3'")
        if not r.endpoint.startswith(("http://", "https://")):
            raise ConfigError("replication.endpoint: must be an http:// or https:// URL")
    if r.lock_horizon_days < 0 or not 0 < r.lock_generation_days <= r.lock_margin_days:
        raise ConfigError("replication.lock_*_days: the horizon must not be negative, the "
                          "generation must be positive and no longer than the margin (an "
                          "extension must never ask for an earlier date)")
    if not 1 <= r.concurrency <= 64:
        raise ConfigError("replication.concurrency: must be between 1 and 64")
    if not 1 <= r.retries <= 20:
        raise ConfigError("replication.retries: must be between 1 and 20")
    if r.bandwidth_kbps < 0:
        raise ConfigError("replication.bandwidth_kbps: must not be negative")
    from .timeofday import parse_schedule

    try:
        parse_schedule(r.bandwidth_schedule)
        if r.window:
            parse_schedule([r.window + "=0"])
    except ValueError as exc:
        key = "replication.window" if r.window and "=" not in r.window else \
            "replication.bandwidth_schedule"
        raise ConfigError(f"{key}: {exc}") from None
    if r.tunnel_subnet:
        import ipaddress

        try:
            ipaddress.ip_network(r.tunnel_subnet)
        except ValueError:
            raise ConfigError("replication.tunnel_subnet: not a network like 10.2.0.0/16"
                              ) from None
    if not cfg.appliance.timezone:
        cfg.appliance.timezone = machine_zone()
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(cfg.appliance.timezone)
    except (KeyError, ValueError, OSError):
        raise ConfigError(f"appliance.timezone: unknown time zone {cfg.appliance.timezone!r}"
                          ) from None
    return cfg


def _validate_limits(lim: LimitsConfig) -> None:
    if not 1 <= lim.heavy_workers <= 64:
        raise ConfigError("limits.heavy_workers: must be between 1 and 64")
    for key in ("heavy_per_principal", "heavy_total", "catalog_free_entries"):
        if getattr(lim, key) < 0:
            raise ConfigError(f"limits.{key}: must not be negative")
    if lim.listing_cache_mb < 1:
        raise ConfigError("limits.listing_cache_mb: must be at least 1")
    if lim.catalog_bytes_per_entry < 1:
        raise ConfigError("limits.catalog_bytes_per_entry: must be at least 1")
    if lim.catalog_max_entries < max(1, lim.catalog_free_entries):
        raise ConfigError("limits.catalog_max_entries: must be at least "
                          "limits.catalog_free_entries")
    if lim.recommit_interval_seconds < 0:
        raise ConfigError("limits.recommit_interval_seconds: must not be negative")


def load(path: str | os.PathLike[str] | None) -> Config:
    """Load a TOML file, or the embedded default when `path` is None."""
    if path is None:
        return validate(Config())
    raw = read_toml(path, "config file", ConfigError)
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    kwargs = {}
    for key, value in raw.items():
        if key not in sections:
            raise ConfigError(f"unknown section [{key}]")
        kwargs[key] = parse_notify(value, Path(path).resolve().parent) if key == "notify" \
            else _load_section(hints[key], value, key)
    cfg = Config(**kwargs)
    base = Path(path).resolve().parent
    if not Path(cfg.store.path).expanduser().is_absolute():
        cfg.store.path = str(base / cfg.store.path)
    if cfg.contract.terms_file and not Path(cfg.contract.terms_file).expanduser().is_absolute():
        cfg.contract.terms_file = str(base / cfg.contract.terms_file)
    if not Path(cfg.replication.directory).expanduser().is_absolute():
        cfg.replication.directory = str(base / cfg.replication.directory)
    return validate(cfg)

