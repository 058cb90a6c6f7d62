"""Delivery to one target: SMTP and the HMAC-signed HTTPS webhook.

SMTP is the standard library's `smtplib`, run in the daemon's pool (`pools.run_in`) rather
than `aiosmtplib`: it is maintained with Python itself (no new runtime dependency on an
appliance that is updated as an image), it does STARTTLS, implicit TLS and AUTH with an
`ssl.SSLContext` we build, and a message is one short blocking conversation that a pool
thread holds for at most the target's timeout -- the same way the appliance already runs its
other blocking work. The webhook uses aiohttp, the appliance's HTTP library.

TLS always verifies the server: against the target's own CA file when it has one (only that
CA is trusted then), else the system's CAs; the host name is checked. A certificate that
does not verify is an error like a refused connection: the message waits and is retried.

Errors raised here are `DeliveryError`: a one-line reason without any secret (never the
password, the HMAC key or the message), and whether trying again can help.
"""

from __future__ import annotations

import hashlib
import hmac
import smtplib
import ssl
import time
from collections.abc import Sequence

import aiohttp

from .settings import SecretFileError, SmtpTarget, WebhookTarget, read_secret

SIGNATURE_HEADER = "X-RDR-Signature"
TIMESTAMP_HEADER = "X-RDR-Timestamp"
DELIVERY_HEADER = "X-RDR-Delivery"


class DeliveryError(Exception):
    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Verifying, host name checked; CA_FILE alone trusted when given."""
    return ssl.create_default_context(cafile=ca_file or None)


def send_smtp(t: SmtpTarget, recipients: Sequence[str], body: bytes) -> dict:
    """One SMTP conversation (blocking: call it in the pool). Returns the recipients the
    server refused (the others accepted the message)."""
    try:
        ctx = tls_context(t.ca_file)
        password = read_secret(t.password_file) if t.username else ""
        client: smtplib.SMTP
        if t.security == "tls":
            client = smtplib.SMTP_SSL(t.host, t.port, timeout=t.timeout_seconds, context=ctx)
        else:
            client = smtplib.SMTP(t.host, t.port, timeout=t.timeout_seconds)
        with client:
            client.ehlo()
            if t.security == "starttls":
                client.starttls(context=ctx)
                client.ehlo()
            if t.username:
                client.login(t.username, password)
            refused = client.sendmail(t.sender, list(recipients), body)
        return {k: v[0] for k, v in refused.items()}
    except ssl.SSLCertVerificationError as exc:
        raise DeliveryError(f"TLS: the server's certificate is not trusted "
                            f"({exc.verify_message})") from None
    except ssl.SSLError as exc:
        raise DeliveryError(f"TLS: {exc.reason or exc}") from None
    except smtplib.SMTPRecipientsRefused as exc:
        codes = sorted({c for c, _ in exc.recipients.values()})
        raise DeliveryError(f"every recipient refused (SMTP {codes})",
                            permanent=all(c >= 500 for c in codes)) from None
    except smtplib.SMTPSenderRefused as exc:
        raise DeliveryError(f"sender refused: SMTP {exc.smtp_code}",
                            permanent=exc.smtp_code >= 500) from None
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(f"authentication failed: SMTP {exc.smtp_code}") from None
    except smtplib.SMTPResponseException as exc:
        text = exc.smtp_error.decode("utf-8", "replace")[:200] \
            if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)[:200]
        raise DeliveryError(f"SMTP {exc.smtp_code}: {text}",
                            permanent=exc.smtp_code >= 500
                            and isinstance(exc, smtplib.SMTPDataError)) from None
    except smtplib.SMTPNotSupportedError as exc:
        raise DeliveryError(f"the server does not support {exc}") from None
    except (TimeoutError, smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}"[:300]) from None
    except SecretFileError as exc:
        raise DeliveryError(exc.message) from None


def signature(key: str, timestamp: str, body: bytes) -> str:
    """The webhook's signature: HMAC-SHA256 over "TIMESTAMP." + body, hex, "sha256=..."."""
    mac = hmac.new(key.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


async def post_webhook(t: WebhookTarget, key: str, delivery: int, body: bytes) -> None:
    """POST the JSON body, signed; a 2xx answer is delivered."""
    ts = str(int(time.time()))
    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: ts,
               SIGNATURE_HEADER: signature(key, ts, body), DELIVERY_HEADER: str(delivery),
               "User-Agent": "rdr-appliance-notify"}
    try:
        timeout = aiohttp.ClientTimeout(total=t.timeout_seconds)
        conn = aiohttp.TCPConnector(ssl=tls_context(t.ca_file))
        async with aiohttp.ClientSession(timeout=timeout, connector=conn) as http, \
                http.post(t.url, data=body, headers=headers) as resp:
            if 200 <= resp.status < 300:
                return
            raise DeliveryError(f"HTTP {resp.status}",
                                permanent=400 <= resp.status < 500
                                and resp.status not in (408, 425, 429))
    except aiohttp.ClientConnectorCertificateError as exc:
        raise DeliveryError(f"TLS: the server's certificate is not trusted "
                            f"({exc.certificate_error})"[:300]) from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}"[:300]) from None
