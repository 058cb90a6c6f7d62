"""The audit log as the data center holds it (`rdr dc audit`): every ``a/`` object read,
decrypted with the escrowed key and its records chained from the first."""

from __future__ import annotations

from rdr_format.objects import DecryptError, ObjectCipher

from ..dcobjects import Target
from .log import Record, records_from_object, verify_chain


async def read_audit(target: Target, cipher: ObjectCipher) -> tuple[list[Record], str | None]:
    """The records (in order) and None, or what breaks the chain."""
    by_seq: dict[int, Record] = {}
    bad: list[str] = []
    async for name in target.list("a/"):
        try:
            for r in records_from_object(cipher.open(name, await target.get(name))):
                by_seq.setdefault(r.seq, r)
        except (DecryptError, ValueError, KeyError, TypeError):
            bad.append(name)
    records = [by_seq[s] for s in sorted(by_seq)]
    problem = verify_chain(records)
    if problem is None and bad:
        problem = f"{len(bad)} audit objects cannot be read ({bad[0]})"
    return records, problem
