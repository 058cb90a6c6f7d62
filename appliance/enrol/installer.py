"""The agent's installer and wheelhouse, served to enrolling hosts (which need no internet).

The wheelhouse is collected when the image is built (`image/wheelhouse.py`):

    WHEELHOUSE/VERSION              the agent version it holds
    WHEELHOUSE/files/*.whl          the agent, its dependencies and pip, every target's
    WHEELHOUSE/files/rdr-agent.service
    WHEELHOUSE/targets/cpXY-ARCH.txt  "sha256  file" for what one target installs

The installer (`install.sh`, rendered per request with the appliance's address, its
certificate's public-key pin and fingerprint) fetches its target's list over the pinned TLS
connection, each file it names the same way, and checks every file against the list's
SHA-256 before pip sees it (docs/ENROLMENT.md). Only names listed in a target file are
served: nothing outside `files/` can be reached.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..config import ConfigError
from ..errors import NotFound

TARGET_RE = re.compile(r"\Acp3(9|1[0-9])-(x86_64|aarch64)\Z")
FILE_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._+-]{0,200}\Z")
#: What may stand in the appliance address put into the script (no shell syntax).
ADDRESS_RE = re.compile(r"\A[A-Za-z0-9.:\[\]-]{1,255}\Z")


#: `enrol.url`: written into a shell script, so an address and nothing else.
BASE_URL_RE = re.compile(r"\Ahttps://[A-Za-z0-9.:\[\]-]{1,255}\Z")


def check_base_url(url: str) -> str:
    """`enrol.url` without a trailing slash ('' stays ''): https://HOST:PORT, nothing more."""
    url = url.rstrip("/")
    if url and not BASE_URL_RE.match(url):
        raise ConfigError(f"enrol.url: {url!r} must be https://HOST:PORT (how hosts reach "
                          "the appliance)")
    return url


def spki_pin(cert_pem: bytes) -> str:
    """curl's --pinnedpubkey value: sha256// and the base64 SHA-256 of the certificate's
    public key (a re-issued certificate with the same key keeps the pin)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


@dataclass(frozen=True, slots=True)
class Pins:
    """The appliance's certificate as the enrolment command and the agent pin it."""
    pubkey: str       # curl --pinnedpubkey
    fingerprint: str  # the agent's RDR_FINGERPRINT (SHA-256 of the DER certificate)


class Wheelhouse:
    """The wheelhouse directory, read per request (it is small text; the wheels stream)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def version(self) -> str:
        try:
            return (self.root / "VERSION").read_text().strip()
        except OSError:
            raise NotFound("no_wheelhouse", "this appliance holds no agent wheelhouse "
                              f"({self.root}); the image build collects it "
                              "(image/wheelhouse.py)") from None

    def target(self, target: str) -> str:
        """The "sha256  file" list of one target (cp39-x86_64 ...)."""
        if not TARGET_RE.match(target):
            raise NotFound("no_such_target", f"no agent build for {target!r}: the agent "
                           "needs CPython 3.9 or later on x86_64 or aarch64")
        self.version()
        try:
            return (self.root / "targets" / f"{target}.txt").read_text()
        except FileNotFoundError:
            raise NotFound("no_such_target", f"this appliance's wheelhouse has no agent "
                           f"build for {target}") from None

    def targets(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "targets").glob("*.txt"))

    def file(self, name: str) -> Path:
        """A file some target lists (so its hash is known to the installer)."""
        if not FILE_RE.match(name):
            raise NotFound("no_such_file", "no such file in the wheelhouse")
        listed = False
        for t in self.targets():
            text = (self.root / "targets" / f"{t}.txt").read_text()
            if any(line.split()[-1:] == [name] for line in text.splitlines()):
                listed = True
                break
        path = self.root / "files" / name
        if not listed or not path.is_file():
            raise NotFound("no_such_file", "no such file in the wheelhouse")
        return path


def render_install_script(url: str, pins: Pins, version: str, serial: str) -> str:
    """install.sh for this appliance: everything it trusts is written into it."""
    return (INSTALL_SH.replace("@URL@", url).replace("@PIN@", pins.pubkey)
            .replace("@FINGERPRINT@", pins.fingerprint).replace("@VERSION@", version)
            .replace("@SERIAL@", serial))


def enrol_command(url: str, pins: Pins, code: str) -> str:
    """The line the page and `rdr hosts add` show. The code is single-use and expires; the
    host's token it is exchanged for never appears on a command line (docs/ENROLMENT.md).
    The script is fetched whole before it runs (no half-downloaded script runs), and a
    failed fetch -- a wrong pin, an unreachable appliance -- exits 1, not 0 as `curl | sh`
    would with its empty input."""
    return (f"sudo sh -c \"$(curl -fsS --insecure --pinnedpubkey '{pins.pubkey}' "
            f"'{url}/api/v1/enrol/install.sh' || echo exit 1)\" rdr-install '{code}'")


# `--insecure` lets curl accept the appliance's self-signed certificate; the public-key pin
# is still checked (curl aborts on a mismatch), so only this appliance is trusted.
INSTALL_SH = r"""#!/bin/sh
# RDR agent installer, served by appliance @SERIAL@ (agent @VERSION@).
# Usage: sudo sh -c "$(curl ...)" rdr-install [CODE]   enrol (no CODE: asked on the tty)
#        sudo sh -c "$(curl ...)" rdr-install --upgrade  the appliance's agent, same enrolment
# Installs the agent into a venv at $RDR_PREFIX (/opt/rdr-agent) from the appliance alone,
# verified by SHA-256, exchanges the one-time code for the host's token (written only into
# /etc/rdr-agent/agent.toml, 0600) and enables the rdr-agent service.
set -eu
URL='@URL@'
PIN='@PIN@'
FINGERPRINT='@FINGERPRINT@'
VERSION='@VERSION@'
PREFIX="${RDR_PREFIX:-/opt/rdr-agent}"
CONFIG="${RDR_AGENT_CONFIG:-/etc/rdr-agent/agent.toml}"
UNIT_DIR="${RDR_UNIT_DIR:-/etc/systemd/system}"

die() { echo "rdr-agent install: $*" >&2; exit 1; }
fetch() { curl -fsS --insecure --pinnedpubkey "$PIN" --retry 3 -o "$2" "$URL/api/v1/enrol/$1" \
          || die "could not fetch $1 from $URL (is the appliance reachable?)"; }

upgrade=no
code=""
case "${1:-}" in
  --upgrade) upgrade=yes ;;
  "") ;;
  *) code="$1" ;;
esac
if [ "${RDR_INSTALL_AS_USER:-no}" != yes ] && [ "$(id -u)" != 0 ]; then
  die "run as root (sudo sh -c ...)"
fi
if [ "$upgrade" = no ] && [ -z "$code" ]; then
  [ -r /dev/tty ] || die "no enrolment code: pass it after 'rdr-install'"
  printf 'Enrolment code (from the appliance page): ' >/dev/tty
  stty -echo </dev/tty 2>/dev/null || true
  IFS= read -r code </dev/tty || true
  stty echo </dev/tty 2>/dev/null || true
  echo >/dev/tty
  [ -n "$code" ] || die "no enrolment code given"
fi

PY="${RDR_PYTHON:-$(command -v python3 || true)}"
[ -n "$PY" ] || die "python3 not found: install it (Debian: apt install python3)"
target=$("$PY" -c 'import platform, sys
if sys.version_info < (3, 9):
    sys.exit("Python %d.%d is too old: the agent needs 3.9 or later" % sys.version_info[:2])
print("cp%d%d-%s" % (sys.version_info[0], sys.version_info[1], platform.machine()))') \
  || die "this Python cannot run the agent"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
fetch "targets/$target" "$tmp/list.txt"
mkdir "$tmp/files"
while read -r sum name; do
  case "$name" in */*|"") die "bad file name in the list: $name" ;; esac
  fetch "files/$name" "$tmp/files/$name"
done < "$tmp/list.txt"
(cd "$tmp/files" && sha256sum -c --quiet ../list.txt) \
  || die "a downloaded file does not match its SHA-256"
echo "rdr-agent install: $(wc -l < "$tmp/list.txt") files verified (SHA-256) for $target"

# A venv without ensurepip (Debian's python3 lacks it without python3-venv): pip runs from
# its verified wheel and installs nothing but the verified files.
if [ ! -x "$PREFIX/bin/python" ]; then
  "$PY" -m venv --without-pip "$PREFIX" || die "could not create the venv $PREFIX"
fi
pipwheel=$(ls "$tmp/files"/pip-*.whl | head -n 1)
# sysconfig, not distutils, for the install paths (pip's switch for distributors): Debian
# 11's python3 has no distutils without python3-distutils (tests/system/test_enrol_debian.py)
"$PREFIX/bin/python" -c 'import runpy, sys, sysconfig
sysconfig._PIP_USE_SYSCONFIG = True
sys.path.insert(0, sys.argv[1])
sys.argv = ["pip"] + sys.argv[2:]
runpy.run_module("pip", run_name="__main__", alter_sys=True)' "$pipwheel" \
  install -q --disable-pip-version-check --no-index --find-links "$tmp/files" --upgrade \
  "rdr-agent==$VERSION" || die "pip could not install the agent"
echo "rdr-agent install: agent $VERSION installed in $PREFIX"

if [ "$upgrade" = no ]; then
  # The code goes to the agent on its standard input (printf is a shell builtin: no
  # process shows it); the token comes back straight into the 0600 config file.
  printf '%s\n' "$code" | "$PREFIX/bin/rdr-agent" enrol --url "$URL" \
    --fingerprint "$FINGERPRINT" --config "$CONFIG" || exit 1
fi

sed "s#/opt/rdr-agent#$PREFIX#g; s#/etc/rdr-agent/agent.toml#$CONFIG#g" \
  "$tmp/files/rdr-agent.service" > "$tmp/rdr-agent.service"
mkdir -p "$UNIT_DIR"
install -m 0644 "$tmp/rdr-agent.service" "$UNIT_DIR/rdr-agent.service"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload
  systemctl enable rdr-agent.service >/dev/null 2>&1
  systemctl restart rdr-agent.service
  echo "rdr-agent install: service rdr-agent enabled and started"
else
  echo "rdr-agent install: systemd is not running here; start" \
       "'$PREFIX/bin/rdr-agent run --config $CONFIG' yourself"
fi
"""
