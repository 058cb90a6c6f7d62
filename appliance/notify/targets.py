"""Notification targets added on the page, beside the TOML's provisioned ones.

The TOML's ``[[notify.smtp]]`` and ``[[notify.webhook]]`` stay the provisioned base: the page
lists them and never changes them (an image or a provisioning run owns that file). Targets
added on the page live in the index, in ``notify_targets`` (`Index.own_tables`, like the
outbox): a change is one SQLite transaction, so a crash never leaves half a target, and the
daemon's loop reads the table each tick, so a target added, changed or removed is used by the
next tick and the next test without a restart. (A ``notify.toml`` in the data directory was
the other choice: it would need its own atomic rewrite and a reload signal for what one
transaction already gives.)

Secrets (the SMTP password, the webhook's HMAC key) must be usable, so they cannot be hashed:
each is a file of mode 0600 under ``notify-secrets/`` (0700) in the data directory, written
atomically (a temporary file created 0600, fsynced, renamed), and read by the sender like the
TOML's secret files (`settings.read_secret`). The table holds only the file's name. No
method here returns a secret; the page's view says only whether one is set, and shows a
webhook's URL by scheme and host only (its path often carries a token; a change without a
URL keeps it).

Every wrong field of an add or a change is named at once (`TargetErrors`, a 400 `bad_target`
with ``fields`` [{field, message}]), the plan form's style.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..errors import BadRequest, Conflict, NotFound
from ..store.index import Index
from .events import CLASSES
from .settings import _ADDRESS, _NAME, SECURITY, NotifyConfig, SmtpTarget, Target, WebhookTarget

if TYPE_CHECKING:
    from ..audit.log import AuditLog

_DDL = """
CREATE TABLE IF NOT EXISTS notify_targets (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('smtp', 'webhook')),
    spec TEXT NOT NULL,
    updated_at REAL NOT NULL,
    updated_by TEXT NOT NULL
);
"""

SMTP_FIELDS = {"kind", "name", "host", "port", "security", "from", "recipients", "username",
               "password", "ca_file", "timeout_seconds"}
WEBHOOK_FIELDS = {"kind", "name", "url", "secret", "classes", "ca_file", "timeout_seconds"}
MAX_SECRET = 1024


class TargetErrors(BadRequest):
    """Every wrong field of one add or change: `fields` is [{"field", "message"}]."""

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        super().__init__("bad_target", "; ".join(f"{f}: {m}" for f, m in fields),
                         fields=[{"field": f, "message": m} for f, m in fields])
        self.fields = fields


def _secret_ok(value: object) -> str | None:
    """Why VALUE cannot be a secret (None: it can). Never echoes the value."""
    if not isinstance(value, str) or not value:
        return "a non-empty text"
    if len(value) > MAX_SECRET or any(c in value for c in "\r\n\0"):
        return f"one line of at most {MAX_SECRET} characters"
    return None


def _addresses(value: object, field: str, errors: list[tuple[str, str]]) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        errors.append((field, "a list of e-mail addresses"))
        return []
    bad = [a for a in value if not _ADDRESS.match(a)]
    if bad:
        errors.append((field, f"not an e-mail address: {', '.join(map(repr, bad[:3]))}"))
    return list(dict.fromkeys(value))


def check_spec(body: dict, *, adding: bool, has_secret: bool
               ) -> tuple[dict, str | None]:
    """BODY checked whole: (the spec to store, without its secret; the new secret or None to
    keep the stored one). HAS_SECRET: a secret is stored already (a change)."""
    errors: list[tuple[str, str]] = []
    kind = body.get("kind")
    if kind not in ("smtp", "webhook"):
        raise TargetErrors([("kind", "'smtp' or 'webhook'")])
    allowed = SMTP_FIELDS if kind == "smtp" else WEBHOOK_FIELDS
    for key in sorted(set(body) - allowed):
        errors.append((key, f"not a field of a {kind} target"))
    for key in sorted(k for k in allowed - {"password", "secret"}
                      if isinstance(body.get(k), str) and "\0" in body[k]):
        errors.append((key, "no NUL characters"))
    name = body.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        errors.append(("name", "a short name: a-z, 0-9, - and _, at most 40"))
    spec: dict = {"kind": kind, "name": name}
    ca_file = body.get("ca_file", "")
    if not isinstance(ca_file, str) or (ca_file and not os.path.isabs(ca_file)):
        errors.append(("ca_file", "an absolute path on the appliance, or empty"))
    spec["ca_file"] = ca_file if isinstance(ca_file, str) else ""
    timeout = body.get("timeout_seconds", 30.0)
    if type(timeout) not in (int, float) or not 0 < timeout <= 300:
        errors.append(("timeout_seconds", "seconds, more than 0 and at most 300"))
    spec["timeout_seconds"] = float(timeout) if type(timeout) in (int, float) else 30.0
    secret_key = "password" if kind == "smtp" else "secret"
    secret = body.get(secret_key)
    if secret is not None and (why := _secret_ok(secret)) is not None:
        errors.append((secret_key, why))
    if kind == "smtp":
        host = body.get("host")
        if not isinstance(host, str) or not host or len(host) > 253 or any(
                c.isspace() for c in host):
            errors.append(("host", "the mail server's name or address"))
        security = body.get("security", "starttls")
        if security not in SECURITY:
            errors.append(("security", f"one of {', '.join(SECURITY)}"))
        port = body.get("port", 465 if security == "tls" else 587)
        if type(port) is not int or not 0 < port < 65536:
            errors.append(("port", "a whole number from 1 to 65535"))
        sender = body.get("from")
        if not isinstance(sender, str) or not _ADDRESS.match(sender):
            errors.append(("from", "the sender's e-mail address"))
        recipients: dict[str, list[str]] = {}
        table = body.get("recipients")
        if not isinstance(table, dict) or not table:
            errors.append(("recipients", "addresses per event class (or 'all')"))
        else:
            for cls, addrs in table.items():
                if cls != "all" and cls not in CLASSES:
                    errors.append((f"recipients.{cls}",
                                   f"not an event class ({', '.join(CLASSES)}, or all)"))
                    continue
                recipients[cls] = _addresses(addrs, f"recipients.{cls}", errors)
            if not any(recipients.values()) and not any(
                    f.startswith("recipients") for f, _ in errors):
                errors.append(("recipients", "at least one address"))
        username = body.get("username", "")
        if not isinstance(username, str) or len(username) > 256:
            errors.append(("username", "the account name on the mail server, or empty"))
            username = ""
        if username and security == "none":
            errors.append(("security", "a password is never sent in the clear: "
                                       "'starttls' or 'tls' with a username"))
        if username and secret is None and not has_secret:
            errors.append(("password", "required with a username"))
        if not username and secret is not None:
            errors.append(("password", "only with a username"))
        spec.update(host=host, port=port, security=security, sender=sender,
                    recipients=recipients, username=username)
        if not username:
            secret = ""  # no username: the stored password (if any) goes
    else:
        url = body.get("url")
        if not isinstance(url, str) or not url.startswith("https://") or len(url) > 2000:
            errors.append(("url", "an https:// URL"))
        classes = body.get("classes", [])
        if not isinstance(classes, list) or not all(c in CLASSES for c in classes):
            errors.append(("classes", f"a list of event classes ({', '.join(CLASSES)}); "
                                      "empty: every class"))
            classes = []
        if secret is None and (adding or not has_secret):
            errors.append(("secret", "required: the HMAC key the receiver checks"))
        spec.update(url=url, classes=list(dict.fromkeys(classes)))
    if errors:
        raise TargetErrors(errors)
    return spec, secret


class TargetBook:
    """The page's targets in the index and their secrets under SECRETS_DIR; PROVISIONED is
    the TOML's `[notify]` (its targets are listed, never changed here)."""

    def __init__(self, index: Index, secrets_dir: Path, provisioned: NotifyConfig,
                 audit: AuditLog | None = None) -> None:
        """`audit`: where each add, change and removal is recorded (a target holds a
        credential: a mail password or a webhook key) -- the tamper-evident log the data
        center keeps."""
        self.index = index
        self.secrets_dir = secrets_dir
        self.provisioned = provisioned
        self.audit = audit
        index.own_tables(_DDL)

    def _audited(self, action: str, name: str, by: str, secret: bool) -> None:
        if self.audit is not None:
            self.audit.record("credential", by, {"notify_target": name, "action": action,
                                                 "secret_changed": secret})

    # --- reading ------------------------------------------------------------------------
    def _rows(self) -> list[tuple[str, str, str]]:
        return self.index.query("SELECT name, kind, spec FROM notify_targets ORDER BY name")

    def _secret_path(self, name: str, kind: str) -> Path:
        return self.secrets_dir / f"{name}.{'password' if kind == 'smtp' else 'key'}"

    def _target(self, name: str, kind: str, spec: dict) -> Target:
        if kind == "smtp":
            recipients = {c: tuple(a) for c, a in spec["recipients"].items()}
            return SmtpTarget(
                name=name, host=spec["host"], port=spec["port"], security=spec["security"],
                sender=spec["sender"], recipients=recipients, username=spec["username"],
                password_file=str(self._secret_path(name, kind)) if spec["username"] else "",
                ca_file=spec["ca_file"], timeout_seconds=spec["timeout_seconds"])
        return WebhookTarget(name=name, url=spec["url"],
                             secret_file=str(self._secret_path(name, kind)),
                             classes=tuple(spec["classes"]), ca_file=spec["ca_file"],
                             timeout_seconds=spec["timeout_seconds"])

    def page_targets(self) -> list[Target]:
        return [self._target(n, k, json.loads(s)) for n, k, s in self._rows()]

    def config(self) -> NotifyConfig:
        """The provisioned config with the page's targets after the TOML's (in the pool:
        one small read of the index)."""
        page = self.page_targets()
        return replace(self.provisioned,
                       smtp=(*self.provisioned.smtp,
                             *(t for t in page if isinstance(t, SmtpTarget))),
                       webhook=(*self.provisioned.webhook,
                                *(t for t in page if isinstance(t, WebhookTarget))))

    def view(self) -> list[dict]:
        """Every target, its source (``config`` or ``page``) and settings; never a secret,
        only whether one is set."""
        out = [describe(t, "config") for t in self.provisioned.targets]
        return out + [describe(t, "page") for t in self.page_targets()]

    # --- changing -----------------------------------------------------------------------
    def _stored(self, name: str) -> tuple[str, dict] | None:
        rows = self.index.query("SELECT kind, spec FROM notify_targets WHERE name = ?",
                                (name,))
        return (rows[0][0], json.loads(rows[0][1])) if rows else None

    def _not_provisioned(self, name: str) -> None:
        if self.provisioned.target(name) is not None:
            raise Conflict("provisioned_target",
                           f"target {name!r} is provisioned in the appliance's TOML; change it "
                           "there (the page changes only targets added on the page)")

    def add(self, body: dict, by: str) -> dict:
        spec, secret = check_spec(body, adding=True, has_secret=False)
        name, kind = spec["name"], spec["kind"]
        self._not_provisioned(name)
        # the check, the secret file and the row under one transaction (the index's lock):
        # two adds of one name cannot overwrite each other's secret
        with self.index.tx() as db:
            if db.execute("SELECT 1 FROM notify_targets WHERE name = ?", (name,)).fetchone():
                raise Conflict("target_exists", f"a target named {name!r} exists already")
            try:
                if secret:
                    self._write_secret(self._secret_path(name, kind), secret)
                db.execute("INSERT INTO notify_targets (name, kind, spec, updated_at, "
                           "updated_by) VALUES (?, ?, ?, ?, ?)",
                           (name, kind, json.dumps(spec), time.time(), by))
            except BaseException:
                self._remove_secret(name, kind)
                raise
        self._audited("add", name, by, bool(secret))
        return describe(self._target(name, kind, spec), "page")

    def change(self, name: str, body: dict, by: str) -> dict:
        """Replace the settings of the page's target NAME; its secret is kept unless a new
        one is sent (an SMTP target without a username drops it)."""
        self._not_provisioned(name)
        stored = self._stored(name)
        if stored is None:
            raise NotFound("no_such_target", f"no target named {name!r} was added on the page")
        kind = stored[0]
        body = {"kind": kind, "name": name, **body}
        if kind == "webhook" and not body.get("url"):
            body["url"] = stored[1]["url"]  # the page never sees it whole: kept
        if body["kind"] != kind or body["name"] != name:
            raise TargetErrors([("kind" if body["kind"] != kind else "name",
                                 "cannot change; remove the target and add another")])
        spec, secret = check_spec(body, adding=False,
                                  has_secret=self._secret_path(name, kind).exists())
        with self.index.tx() as db:
            if db.execute("UPDATE notify_targets SET spec = ?, updated_at = ?, updated_by = ? "
                          "WHERE name = ?", (json.dumps(spec), time.time(), by, name)
                          ).rowcount != 1:
                raise NotFound("no_such_target", f"no target named {name!r} (removed "
                               "meanwhile)")
            if secret:
                self._write_secret(self._secret_path(name, kind), secret)
            elif secret == "":
                self._remove_secret(name, kind)
        self._audited("change", name, by, secret is not None)
        return describe(self._target(name, kind, spec), "page")

    def remove(self, name: str, by: str = "unknown") -> None:
        self._not_provisioned(name)
        with self.index.tx() as db:
            row = db.execute("SELECT kind FROM notify_targets WHERE name = ?",
                             (name,)).fetchone()
            if row is None:
                raise NotFound("no_such_target",
                               f"no target named {name!r} was added on the page")
            db.execute("DELETE FROM notify_targets WHERE name = ?", (name,))
            self._remove_secret(name, row[0])
        self._audited("remove", name, by, True)

    # --- the secret files ---------------------------------------------------------------
    def _write_secret(self, path: Path, secret: str) -> None:
        """Atomically, 0600 from its first byte, in a 0700 directory."""
        self.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.secrets_dir, 0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, secret.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(self.secrets_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _remove_secret(self, name: str, kind: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._secret_path(name, kind).unlink()


def describe(t: Target, source: str) -> dict:
    """A target for the page: its settings and whether its secret is set, never the secret
    or its file's name."""
    base = {"name": t.name, "kind": t.kind, "source": source, "ca_file": t.ca_file,
            "timeout_seconds": t.timeout_seconds}
    if isinstance(t, SmtpTarget):
        return {**base, "host": t.host, "port": t.port, "security": t.security,
                "from": t.sender, "username": t.username,
                "recipients": {c: list(a) for c, a in t.recipients.items()},
                "password_set": bool(t.password_file)}
    return {**base, "url": url_shown(t.url), "classes": list(t.classes),
            "secret_set": bool(t.secret_file)}


def url_shown(url: str) -> str:
    """A webhook's URL as the page shows it: scheme, host and port (the path and query often
    carry a token, like the log's recipients)."""
    u = urlsplit(url)
    return f"{u.scheme}://{u.hostname}{f':{u.port}' if u.port else ''}/…"
