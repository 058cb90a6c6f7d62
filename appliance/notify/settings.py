"""The ``[notify]`` section of the appliance's TOML: targets, who gets which class, timings.

Parsed here rather than in `appliance/config.py` because targets are lists of tables
(``[[notify.smtp]]``, ``[[notify.webhook]]``) with a table of recipients per class, which the
flat sections there do not have; the style is the same: every key checked, unknown keys are
errors naming the key, defaults that run without any file (no target: nothing is sent).

Secrets (the SMTP password, the webhook's HMAC key) are never in the TOML: each names a file
that must be 0600 (or stricter), like the replication key; they are read when a message is
sent, never logged and never put in a message.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ApplianceError
from .events import CLASSES

SECURITY = ("starttls", "tls", "none")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_ADDRESS = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+$")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")

#: Minutes between two messages of a class to the same target, unless configured.
DEFAULT_THROTTLE_MINUTES: dict[str, float] = {
    "premier": 0.0, "backup": 5.0, "window": 30.0, "agent": 30.0, "disk": 30.0,
    "replication": 60.0, "seed": 0.0, "digest": 0.0, "report": 0.0, "test": 0.0,
}


class NotifyConfigError(ApplianceError, ValueError):
    """The ``[notify]`` section is unusable; the message names the key."""

    def __init__(self, message: str) -> None:
        super().__init__("bad_config", message)


class SecretFileError(ApplianceError):
    """A secret file is missing or readable by others (the message names the file only)."""

    def __init__(self, message: str) -> None:
        super().__init__("bad_secret_file", message)


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    name: str
    host: str
    port: int
    security: str  # "starttls" | "tls" (implicit, port 465) | "none"
    sender: str  # the From address
    #: event class (or "all") -> addresses; a class not listed gets "all"'s.
    recipients: dict[str, tuple[str, ...]]
    username: str = ""
    password_file: str = ""
    #: A CA certificate (PEM) to trust for this server, on top of nothing else: the server's
    #: certificate must chain to it. Empty: the system's CAs.
    ca_file: str = ""
    timeout_seconds: float = 30.0

    kind = "smtp"

    def to(self, cls: str) -> tuple[str, ...]:
        return self.recipients.get(cls, self.recipients.get("all", ()))


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    name: str
    url: str
    secret_file: str
    classes: tuple[str, ...] = ()  # empty: every class
    ca_file: str = ""
    timeout_seconds: float = 30.0

    kind = "webhook"

    def to(self, cls: str) -> tuple[str, ...]:
        return (self.url,) if not self.classes or cls in self.classes else ()


Target = SmtpTarget | WebhookTarget


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    smtp: tuple[SmtpTarget, ...] = ()
    webhook: tuple[WebhookTarget, ...] = ()
    #: The page's address as people reach it (links in messages); empty: no links.
    page_url: str = ""
    #: How often the daemon looks for events and sends what is due.
    poll_seconds: float = 15.0
    #: How often the conditions (disk, agents, replication, seed disks) are read: the
    #: replication status they include counts the bytes not yet sent, which is not free.
    conditions_seconds: float = 60.0
    #: An event waits this long for others of its group before its message is made.
    group_seconds: float = 60.0
    throttle_minutes: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_THROTTLE_MINUTES))
    #: Back-off between attempts: doubles from the first to the most.
    retry_first_seconds: float = 60.0
    retry_max_seconds: float = 3600.0
    #: A message not delivered this long after it was made is undeliverable.
    give_up_hours: float = 48.0
    #: A premier list longer than this goes whole into a CSV attachment.
    attach_after: int = 25
    #: Local time of the daily digest ("HH:MM"); empty: no digest.
    digest_at: str = ""
    #: A report when a month closes.
    monthly_report: bool = False
    #: Conditions raised once they last this long.
    replication_lag_hours: float = 36.0
    tunnel_down_minutes: float = 30.0
    agent_offline_minutes: float = 60.0

    @property
    def targets(self) -> tuple[Target, ...]:
        return (*self.smtp, *self.webhook)

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)


def read_secret(path: str) -> str:
    """The secret in PATH (its first line), refused unless only its owner may read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SecretFileError(f"secret file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
            raise SecretFileError(f"secret file {path} must be a file of mode 0600 "
                                  f"(it is {stat.S_IMODE(st.st_mode):04o})")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(4096)
    finally:
        os.close(fd)
    line = data.decode("utf-8", "replace").splitlines()
    return line[0].strip() if line else ""


# --- parsing ---------------------------------------------------------------------------------
def _take(raw: dict, key: str, kind: type | tuple[type, ...], prefix: str, default: object,
          ) -> object:
    if key not in raw:
        return default
    value = raw[key]
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) not in (kind if isinstance(kind, tuple) else (kind,)):
        raise NotifyConfigError(f"{prefix}.{key}: expected {getattr(kind, '__name__', kind)},"
                                f" got {type(value).__name__}")
    return value


def _unknown(raw: dict, known: set[str], prefix: str) -> None:
    for key in raw:
        if key not in known:
            raise NotifyConfigError(f"unknown key {prefix}.{key}")


def _path(value: str, base: Path | None) -> str:
    if value and base is not None and not Path(value).expanduser().is_absolute():
        return str(base / value)
    return str(Path(value).expanduser()) if value else ""


def _addresses(value: object, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise NotifyConfigError(f"{key}: expected a list of addresses")
    for a in value:
        if not _ADDRESS.match(a):
            raise NotifyConfigError(f"{key}: {a!r} is not an e-mail address")
    return tuple(value)


def _name(raw: dict, prefix: str, seen: set[str]) -> str:
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise NotifyConfigError(f"{prefix}.name: a short name (a-z, 0-9, - and _) is needed")
    if name in seen:
        raise NotifyConfigError(f"{prefix}.name: {name!r} names two targets")
    seen.add(name)
    return name


def _positive(value: float, key: str) -> float:
    if not value > 0:
        raise NotifyConfigError(f"{key}: must be positive")
    return value


def _smtp(raw: object, prefix: str, base: Path | None, seen: set[str]) -> SmtpTarget:
    if not isinstance(raw, dict):
        raise NotifyConfigError(f"{prefix}: expected a table")
    _unknown(raw, {"name", "host", "port", "security", "from", "recipients", "to",
                   "username", "password_file", "ca_file", "timeout_seconds"}, prefix)
    name = _name(raw, prefix, seen)
    host = _take(raw, "host", str, prefix, "")
    if not host:
        raise NotifyConfigError(f"{prefix}.host: required")
    security = _take(raw, "security", str, prefix, "starttls")
    if security not in SECURITY:
        raise NotifyConfigError(f"{prefix}.security: one of {', '.join(SECURITY)}")
    port = _take(raw, "port", int, prefix, 465 if security == "tls" else 587)
    if not 0 < port < 65536:
        raise NotifyConfigError(f"{prefix}.port: must be 1 to 65535")
    sender = _take(raw, "from", str, prefix, "")
    _addresses(sender, f"{prefix}.from")
    recipients: dict[str, tuple[str, ...]] = {}
    if "to" in raw:
        recipients["all"] = _addresses(raw["to"], f"{prefix}.to")
    table = _take(raw, "recipients", dict, prefix, {})
    for cls, addrs in table.items():
        if cls != "all" and cls not in CLASSES:
            raise NotifyConfigError(f"{prefix}.recipients.{cls}: not an event class "
                                    f"({', '.join(CLASSES)}, or all)")
        recipients[cls] = _addresses(addrs, f"{prefix}.recipients.{cls}")
    if not any(recipients.values()):
        raise NotifyConfigError(f"{prefix}: at least one recipient (to, or recipients.CLASS)")
    username = _take(raw, "username", str, prefix, "")
    password_file = _path(_take(raw, "password_file", str, prefix, ""), base)
    if bool(username) != bool(password_file):
        raise NotifyConfigError(f"{prefix}.username and {prefix}.password_file go together")
    if username and security == "none":
        raise NotifyConfigError(f"{prefix}: AUTH needs security = 'starttls' or 'tls' "
                                "(a password is never sent in the clear)")
    return SmtpTarget(name=name, host=host, port=port, security=security, sender=sender,
                      recipients=recipients, username=username, password_file=password_file,
                      ca_file=_path(_take(raw, "ca_file", str, prefix, ""), base),
                      timeout_seconds=_positive(
                          _take(raw, "timeout_seconds", float, prefix, 30.0),
                          f"{prefix}.timeout_seconds"))


def _webhook(raw: object, prefix: str, base: Path | None, seen: set[str]) -> WebhookTarget:
    if not isinstance(raw, dict):
        raise NotifyConfigError(f"{prefix}: expected a table")
    _unknown(raw, {"name", "url", "secret_file", "classes", "ca_file", "timeout_seconds"},
             prefix)
    name = _name(raw, prefix, seen)
    url = _take(raw, "url", str, prefix, "")
    if not url.startswith("https://"):
        raise NotifyConfigError(f"{prefix}.url: an https:// URL is required")
    secret_file = _path(_take(raw, "secret_file", str, prefix, ""), base)
    if not secret_file:
        raise NotifyConfigError(f"{prefix}.secret_file: required (the HMAC key, 0600)")
    classes = _take(raw, "classes", list, prefix, [])
    for c in classes:
        if c not in CLASSES:
            raise NotifyConfigError(f"{prefix}.classes: {c!r} is not an event class")
    return WebhookTarget(name=name, url=url, secret_file=secret_file, classes=tuple(classes),
                         ca_file=_path(_take(raw, "ca_file", str, prefix, ""), base),
                         timeout_seconds=_positive(
                             _take(raw, "timeout_seconds", float, prefix, 30.0),
                             f"{prefix}.timeout_seconds"))


_FLOATS = ("poll_seconds", "conditions_seconds", "group_seconds", "retry_first_seconds",
           "retry_max_seconds", "give_up_hours", "replication_lag_hours", "tunnel_down_minutes",
           "agent_offline_minutes")


def parse_notify(raw: object, base: Path | None = None) -> NotifyConfig:
    """The ``[notify]`` table, checked; relative file names are taken from BASE (the
    config file's directory)."""
    if not isinstance(raw, dict):
        raise NotifyConfigError("notify: expected a table")
    _unknown(raw, {"smtp", "webhook", "page_url", "throttle_minutes", "attach_after",
                   "digest_at", "monthly_report", *_FLOATS}, "notify")
    seen: set[str] = set()
    smtp = raw.get("smtp", [])
    hooks = raw.get("webhook", [])
    if not isinstance(smtp, list) or not isinstance(hooks, list):
        raise NotifyConfigError("notify.smtp and notify.webhook: arrays of tables "
                                "([[notify.smtp]])")
    kwargs: dict[str, object] = {
        "smtp": tuple(_smtp(t, f"notify.smtp[{i}]", base, seen) for i, t in enumerate(smtp)),
        "webhook": tuple(_webhook(t, f"notify.webhook[{i}]", base, seen)
                         for i, t in enumerate(hooks)),
    }
    for key in _FLOATS:
        if key in raw:
            kwargs[key] = _positive(_take(raw, key, float, "notify", 0.0), f"notify.{key}")
    page_url = _take(raw, "page_url", str, "notify", "")
    if page_url and not page_url.startswith(("https://", "http://")):
        raise NotifyConfigError("notify.page_url: an https:// address")
    kwargs["page_url"] = page_url.rstrip("/")
    throttle = dict(DEFAULT_THROTTLE_MINUTES)
    for cls, minutes in _take(raw, "throttle_minutes", dict, "notify", {}).items():
        if cls not in CLASSES or type(minutes) not in (int, float) or minutes < 0:
            raise NotifyConfigError(f"notify.throttle_minutes.{cls}: an event class and "
                                    "minutes (0 or more)")
        throttle[cls] = float(minutes)
    kwargs["throttle_minutes"] = throttle
    attach = _take(raw, "attach_after", int, "notify", 25)
    if attach < 1:
        raise NotifyConfigError("notify.attach_after: at least 1")
    kwargs["attach_after"] = attach
    digest_at = _take(raw, "digest_at", str, "notify", "")
    if digest_at and not _HHMM.match(digest_at):
        raise NotifyConfigError("notify.digest_at: HH:MM (local time) or empty")
    kwargs["digest_at"] = digest_at
    kwargs["monthly_report"] = _take(raw, "monthly_report", bool, "notify", False)
    cfg = NotifyConfig(**kwargs)  # type: ignore[arg-type]
    if cfg.retry_max_seconds < cfg.retry_first_seconds:
        raise NotifyConfigError("notify.retry_max_seconds: at least retry_first_seconds")
    return cfg
