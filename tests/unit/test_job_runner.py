"""The agent's push-restore job runner against a scripted appliance: what it reports when
the appliance stops a job under way."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

from rdr_agent.errors import ApplianceError
from rdr_agent.jobs import JobRunner
from rdr_format.catalog import FILE, CatalogWriter, Entry, Range
from rdr_format.chunkfile import ChunkEncoder, chunk_id
from rdr_format.workers import WorkerPool


class StoppingAppliance:
    """Serves one job's snapshot and catalog; its chunks never come, and the progress report
    sent while one is awaited is answered as the appliance answers a job it no longer runs
    (409)."""

    def __init__(self, catalog: bytes, chunk: bytes) -> None:
        self.catalog, self.chunk = catalog, chunk
        self.asked: list[str] = []
        self.fetching = asyncio.Event()
        self.finished: list[tuple[int, bool, str]] = []

    async def job_snapshot(self, jid: int) -> dict:
        return {"snapshot": {"snapshot": "2026-12-01T00-00-00Z"}}

    async def job_catalog(self, jid: int, out: Path) -> int:
        Path(out).write_bytes(self.catalog)
        return len(self.catalog)

    async def job_chunk(self, jid: int, cid: str) -> bytes:
        self.asked.append(cid)
        self.fetching.set()
        await asyncio.Event().wait()  # never answered: the job is stopped meanwhile
        return self.chunk

    async def job_progress(self, jid: int, files: int, nbytes: int,
                           total: int | None = None) -> None:
        await self.fetching.wait()
        raise ApplianceError(409, "job_not_running", f"job {jid} is not running")

    async def job_finish(self, jid: int, ok: bool, files: int, nbytes: int, errors: int,
                         message: str) -> None:
        self.finished.append((jid, ok, message))


async def test_a_job_the_appliance_stops_is_reported_as_stopped(tmp_path: Path) -> None:
    data = b"the file's bytes" * 100
    cid = chunk_id(data)
    cat: list[bytes] = []
    w = CatalogWriter(cat.append, lambda _: None)
    w.add_block(b"", [Entry(name=b"f", type=FILE, mode=0o644, uid=0, gid=0, mtime_ns=0,
                            size=len(data), ranges=[Range(cid, 0, len(data), len(data))])])
    appliance = StoppingAppliance(b"".join(cat), ChunkEncoder().encode(data).data)
    settings = SimpleNamespace(state_dir=tmp_path / "state", restore_roots=(),
                               allow_special_files=False)
    pool = WorkerPool(2, "test-job")
    try:
        runner = JobRunner(appliance, settings, pool)  # type: ignore[arg-type]
        outcome = await runner.handle({"id": 7, "target_dir": str(tmp_path / "to"),
                                       "paths": ["f"]})
    finally:
        pool.shutdown()
    assert appliance.asked == [cid]  # the restore was under way when it was stopped
    assert not outcome.ok
    assert outcome.message == "restore failed: the appliance stopped the job: " \
                              "job 7 is not running"
    assert appliance.finished == [(7, False, outcome.message)]
    assert not (tmp_path / "state" / "jobs" / "7").exists()  # the job's catalog is gone
