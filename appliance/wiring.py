"""Builders shared by the daemon (composition root) and the admin CLI: each service made
from the config in exactly one place, so both run the same rules."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from pathlib import Path

from rdr_format.objects import ObjectCipher, load_or_create_key

from .audit.log import AuditLog
from .backup_schedule import BackupScheduler
from .capacity.billing_service import BillingService
from .capacity.contract import ContractError, load_contract
from .capacity.samples import Samples
from .capacity.service import CapacityService
from .capacity.watermarks import Admission, Watermarks
from .config import Config, ConfigError
from .detect.repository import Verdicts
from .detect.rules import Thresholds
from .detect.service import Detector, Suspicion
from .enrol.service import Enrolment
from .health.admission import RefuseWhileDegraded
from .health.published import PublishedHealth
from .health.summary import ApplianceSummary
from .jobs.history import JobHistory
from .jobs.maintenance import Maintenance, MaintenanceSettings
from .notify.outbox import Outbox
from .notify.service import Notifications
from .notify.targets import TargetBook
from .plans.repository import BackupPlans
from .replication.engine import Replicator
from .replication.locks import LockBook, settings_for
from .replication.pending_seed import PendingSeed
from .replication.state import ReplicationState
from .replication.status import replication_status
from .replication.targets import (
    DirTarget,
    RateLimitedTarget,
    RetryingTarget,
    S3Target,
    Target,
)
from .runs.repository import BackupRuns
from .scheduler import Periodic
from .store.datastore import CatalogLimits, Datastore


def maintenance_settings(cfg: Config) -> MaintenanceSettings:
    """What the maintenance jobs need from the config, in the store's own terms."""
    m = cfg.maintenance
    return MaintenanceSettings(
        default_policy=cfg.retention.policy, timezone=cfg.appliance.timezone,
        # With replication on, prune keeps what the data center does not have yet.
        replication_required=cfg.replication.enabled,
        gc_grace_seconds=m.gc_grace_minutes * 60,
        stale_session_seconds=m.stale_session_hours * 3600)


def watermarks(cfg: Config) -> Watermarks:
    return Watermarks(tuple(cfg.capacity.warn_percent), cfg.capacity.hard_percent)


def catalog_limits(cfg: Config) -> CatalogLimits:
    lim = cfg.limits
    return CatalogLimits(free_entries=lim.catalog_free_entries,
                         bytes_per_entry=lim.catalog_bytes_per_entry,
                         max_entries=lim.catalog_max_entries,
                         recommit_seconds=lim.recommit_interval_seconds)


def open_store(cfg: Config, degraded: Mapping[str, str] | None = None) -> Datastore:
    """The datastore; with DEGRADED (the daemon's live reasons), new sessions are refused
    while there is one, before the watermarks are asked."""
    admit: Callable[[], None] = Admission(cfg.data_dir, watermarks(cfg))
    if degraded is not None:
        admit = RefuseWhileDegraded(degraded, admit)
    return Datastore(cfg.data_dir, cfg.store.session_lease_seconds,
                     cfg.store.reserve_mb * 1024 * 1024, admit=admit,
                     max_active=cfg.store.max_active_backups, limits=catalog_limits(cfg))


def job_history(store: Datastore) -> JobHistory:
    """The maintenance job history, in the store's index."""
    return JobHistory(store.index, store.root / "maintenance.lock")


# --- the features' state in the store's database (each repository creates its tables and
# moves what an older release kept in the `kv` table when it is built) ---
def replication_state(store: Datastore) -> ReplicationState:
    return ReplicationState(store.index)


def samples(store: Datastore) -> Samples:
    return Samples(store.index)


def pending_seed(store: Datastore) -> PendingSeed:
    return PendingSeed(store.index)


def published_health(store: Datastore) -> PublishedHealth:
    return PublishedHealth(store.index)


def enrolment(store: Datastore) -> Enrolment:
    """Enrolment codes, host reports and RTOs; the RTO estimate reads push-restore speeds."""
    from .restores.jobs import RestoreJobs
    from .restores.ledger import RestoreLedger

    jobs = RestoreJobs(store.index, RestoreLedger(store.index))
    return Enrolment(store, plans(store), jobs.throughput)


def maintenance(cfg: Config, store: Datastore, det: Detector | None = None) -> Maintenance:
    """Prune keeps what detection (DET, or one built here) holds: the clean snapshots before
    a suspicious one."""
    return Maintenance(store, job_history(store), maintenance_settings(cfg),
                       held=(det or detector(cfg, store)).held, audit=audit_log(store))


def detector(cfg: Config, store: Datastore, pool: Executor | None = None,
             on_suspicious: Callable[[Suspicion], None] | None = None) -> Detector:
    d = cfg.detection
    fields = {k: getattr(d, k) for k in Thresholds.__dataclass_fields__}
    return Detector(store, Verdicts(store.index), Thresholds(**fields),
                    hold_clean=d.hold_clean, pool=pool, on_suspicious=on_suspicious,
                    answer_within=d.answer_within_seconds, audit=audit_log(store))


def capacity(cfg: Config, store: Datastore, samples: Samples) -> CapacityService:
    return CapacityService(store, samples, job_history(store),
                           installed_gb=cfg.capacity.installed_gb,
                           marks=watermarks(cfg), timezone=cfg.appliance.timezone,
                           default_window=cfg.contract.default_window,
                           commitment_months=cfg.contract.commitment_months)


def billing(cfg: Config, store: Datastore) -> BillingService | None:
    """The monthly statement's service, when a contract file is provisioned (ContractError
    names what is wrong with it)."""
    if not cfg.contract.terms_file:
        return None
    try:
        contract = load_contract(cfg.contract.terms_file)
    except ContractError as exc:
        raise ConfigError(f"contract.terms_file: {exc}") from None
    return BillingService(store.index, contract,
                          timezone=cfg.appliance.timezone,
                          default_window=cfg.contract.default_window)


def replication_cipher(cfg: Config) -> ObjectCipher:
    """The data key: provisioned (key_file, must exist) or, on the embedded default, made
    at first start under the data directory (0600)."""
    r = cfg.replication
    path = Path(r.key_file) if r.key_file else cfg.data_dir / "replication.key"
    return ObjectCipher(load_or_create_key(path, create=not r.key_file))


def replication_target(cfg: Config, limited: bool = True) -> Target:
    r = cfg.replication
    inner: Target
    if r.target == "s3":
        inner = S3Target(r.endpoint, r.bucket, r.access_key, r.secret_key, r.region,
                         connections=r.concurrency + 2)
    else:
        inner = DirTarget(Path(r.directory).expanduser())
    if limited and (r.bandwidth_kbps > 0 or r.bandwidth_schedule):
        inner = RateLimitedTarget(inner, r.bandwidth_kbps, r.bandwidth_schedule,
                                  cfg.appliance.timezone)
    return RetryingTarget(inner, attempts=r.retries)


def replicator(cfg: Config, store: Datastore, state: ReplicationState, samples: Samples,
               seed: PendingSeed, pool: Executor, target: Target,
               tunnel_up: Callable[[], bool] | None = None,
               on_change: Callable[[], None] | None = None) -> Replicator:
    r = cfg.replication
    new_key = not r.key_file and not (cfg.data_dir / "replication.key").exists()
    cipher = replication_cipher(cfg)
    if new_key:  # the embedded default's data key, made now: worth a record
        audit_log(store).record("key", "appliance", {"replication_key": "created"})
    return Replicator(store, state, samples, seed, target, cipher, pool,
                      concurrency=r.concurrency, window=r.window,
                      timezone=cfg.appliance.timezone, tunnel_up=tunnel_up,
                      on_change=on_change, locks=LockBook(store.index),
                      lock_settings=lambda: settings_for(r, cfg.retention.policy, store.index),
                      audit=audit_log(store))


def audit_log(store: Datastore) -> AuditLog:
    return AuditLog(store.index)


def summary(cfg: Config, store: Datastore, cap: CapacityService | None = None,
            degraded: Callable[[], Mapping[str, str]] = dict,
            state: ReplicationState | None = None) -> ApplianceSummary:
    """The one appliance summary (page overview, `rdr status`, /metrics)."""
    if state is None and cfg.replication.enabled:
        state = replication_state(store)
    return ApplianceSummary(
        store, cap if cap is not None else capacity(cfg, store, samples(store)),
        serial=cfg.appliance.serial, timezone=cfg.appliance.timezone,
        default_window=cfg.contract.default_window,
        replication=(lambda: replication_status(store, state, cfg)) if state is not None
        else None,
        degraded=degraded)


def periodic_jobs(cfg: Config, maint: Maintenance, cap: CapacityService,
                  heal: Callable[[str], bytes | None] | None = None,
                  on_prune: Callable[[], None] | None = None,
                  billing: BillingService | None = None) -> list[Periodic]:
    """The daemon's maintenance jobs; ON_PRUNE hears of every prune run (snapshots gone:
    figures computed from them, such as /metrics', are out of date)."""
    m = cfg.maintenance

    def prune() -> object:
        try:
            return maint.prune()
        finally:
            if on_prune is not None:
                on_prune()

    return [
        Periodic("prune", m.prune_interval_hours * 3600, prune),
        Periodic("gc", m.gc_interval_hours * 3600, maint.gc),
        Periodic("verify", m.verify_interval_hours * 3600,
                 lambda: maint.verify(m.verify_sample_percent, m.verify_rate_mb, heal=heal)),
        Periodic("usage-sample", cfg.capacity.sample_interval_hours * 3600, cap.take_sample),
        *([Periodic("statement-close", cfg.contract.statement_close_hours * 3600,
                    lambda: billing.close_previous(maint.history))] if billing else []),
    ]


def plans(store: Datastore) -> BackupPlans:
    """The hosts' backup plans, mirrored to the data directory's ``plans/`` (rebuild-index
    reads them back)."""
    return BackupPlans(store.index, store.root / "plans")


def runs(store: Datastore) -> BackupRuns:
    return BackupRuns(store.index)


def backup_scheduler(cfg: Config, store: Datastore, plans: BackupPlans,
                     runs: BackupRuns) -> BackupScheduler:
    """Scheduled backups, "back up now", pause and resume (the daemon and `rdr hosts`)."""
    c = cfg.contract
    return BackupScheduler(store, plans, runs, timezone=cfg.appliance.timezone,
                           default_window=c.default_window, seed=cfg.appliance.serial,
                           max_jitter=c.schedule_jitter_seconds)


def notifications(cfg: Config, store: Datastore, pool: Executor | None,
                  summary: ApplianceSummary | None = None,
                  report: Callable[[str], dict] | None = None,
                  seed_status: Callable[[], dict] | None = None,
                  suspicious: Callable[[], dict[str, int]] | None = None) -> Notifications:
    """E-mail and webhook notifications (the daemon's loop, `rdr notify`); builds the
    outbox's tables (SQLite: call it in the pool). The page's targets are in the index, their
    secrets in notify-secrets/ of the data directory (appliance/notify/targets.py)."""
    book = TargetBook(store.index, cfg.data_dir / "notify-secrets", cfg.notify,
                      audit=audit_log(store))
    return Notifications(cfg.notify, Outbox(store.index), runs(store), book=book,
                         serial=cfg.appliance.serial, timezone=cfg.appliance.timezone,
                         pool=pool, summary=summary, report=report, seed_status=seed_status,
                         suspicious=suspicious)
