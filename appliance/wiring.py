"""Builders shared by the daemon (composition root) and the admin CLI: each service made
from the config in exactly one place, so both run the same rules."""

from __future__ import annotations

from .capacity.service import CapacityService
from .capacity.watermarks import Admission, Watermarks
from .config import Config
from .scheduler import Periodic
from .store.datastore import Datastore
from .store.maintenance import Maintenance, MaintenanceSettings


def maintenance_settings(cfg: Config) -> MaintenanceSettings:
    """What the maintenance jobs need from the config, in the store's own terms."""
    m = cfg.maintenance
    return MaintenanceSettings(
        default_policy=cfg.retention.policy, timezone=cfg.appliance.timezone,
        replication_required=False,  # nothing to wait for until replication is configured
        gc_grace_seconds=m.gc_grace_minutes * 60,
        stale_session_seconds=m.stale_session_hours * 3600)


def watermarks(cfg: Config) -> Watermarks:
    return Watermarks(tuple(cfg.capacity.warn_percent), cfg.capacity.hard_percent)


def open_store(cfg: Config) -> Datastore:
    return Datastore(cfg.data_dir, cfg.store.session_lease_seconds,
                     cfg.store.reserve_mb * 1024 * 1024,
                     admit=Admission(cfg.data_dir, watermarks(cfg)))


def maintenance(cfg: Config, store: Datastore) -> Maintenance:
    return Maintenance(store, maintenance_settings(cfg))


def capacity(cfg: Config, store: Datastore) -> CapacityService:
    return CapacityService(store, installed_gb=cfg.capacity.installed_gb,
                           marks=watermarks(cfg), timezone=cfg.appliance.timezone,
                           default_window=cfg.contract.default_window,
                           commitment_months=cfg.contract.commitment_months)


def periodic_jobs(cfg: Config, maint: Maintenance, cap: CapacityService) -> list[Periodic]:
    m = cfg.maintenance
    return [
        Periodic("prune", m.prune_interval_hours * 3600, maint.prune),
        Periodic("gc", m.gc_interval_hours * 3600, maint.gc),
        Periodic("verify", m.verify_interval_hours * 3600,
                 lambda: maint.verify(m.verify_sample_percent, m.verify_rate_mb)),
        Periodic("usage-sample", cfg.capacity.sample_interval_hours * 3600, cap.take_sample),
    ]
