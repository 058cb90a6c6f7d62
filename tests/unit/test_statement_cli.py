"""`rdr usage` with a contract, `rdr statement --html`, `rdr tier`, `rdr hosts add --kind`
and the contract's retention options, as an administrator runs them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import provisioning
from appliance.store.datastore import Datastore

from ..conftest import rdr_cmd
from ..treeutil import run
from .test_capacity import GB, at, record, register

EXAMPLE = Path(provisioning.__file__).parent / "contract.example.toml"


def config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "a.toml"
    cfg.write_text(f"[store]\npath = '{tmp_path / 'data'}'\n[appliance]\nserial = 'RDR-0001'\n"
                   f"[contract]\nterms_file = '{EXAMPLE}'\n{extra}")
    return cfg


async def test_usage_and_statement_with_a_contract(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    st = Datastore(tmp_path / "data", reserve_bytes=0)
    register(st, "web01", at(2026, 8, 1))
    record(st, "web01", at(2026, 11, 5), 1600 * GB)
    st.close()
    args = ["--month", "2026-11", "--config", str(cfg)]
    rc, out, err = await run(rdr_cmd() + ["usage", "--json", *args])
    assert rc == 0, err
    server = json.loads(out)["statement"]["charges"]["server"]
    assert (server["rule"], server["amount_cents"]) == ("above-committed-tier", 800000)
    rc, out, err = await run(rdr_cmd() + ["usage", "--csv", *args])
    rows = list(csv.reader(io.StringIO(out)))
    assert ["2026-11", "total charges", "", "", "", "889900", "$8,899.00"] in rows
    rc, out, err = await run(rdr_cmd() + ["usage", *args])
    assert "1600 GB x $5.00/GB = $8,000.00" in out and "TOTAL CHARGES $8,899.00" in out
    doc = tmp_path / "nov.html"
    rc, out, err = await run(rdr_cmd() + ["statement", "--html", str(doc), *args])
    assert rc == 0, err
    html = doc.read_text()
    assert html.startswith("<!DOCTYPE html>") and "$8,000.00" in html and "@media print" in html
    assert "<script" not in html and "http" not in html.split("<body>")[1]  # self-contained
    rc, out, err = await run(rdr_cmd() + ["statement", "--month", "2026-13", "--config",
                                          str(cfg)])
    assert rc == 1 and err.count("\n") == 1 and "month" in err


async def test_tier_changes_from_the_command_line(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    Datastore(tmp_path / "data", reserve_bytes=0).close()
    c = ["--config", str(cfg)]
    rc, out, err = await run(rdr_cmd() + ["tier", "1500-3000", "--received", "2026-08-14", *c])
    assert rc == 0 and "effective 2026-09-01" in out, err
    rc, out, err = await run(rdr_cmd() + ["tier", "0-500", "--received", "2026-12-01", *c])
    assert rc == 0, err
    rc, out, err = await run(rdr_cmd() + ["tier", "500-1500", "--received", "2027-01-05", *c])
    assert rc == 1 and "2 tier changes were already made" in err and err.count("\n") == 1
    rc, out, err = await run(rdr_cmd() + ["tier", "galactic", *c])
    assert rc == 1 and "no tier named 'galactic'" in err


async def test_pcs_and_the_contracts_retention_options(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    c = ["--config", str(cfg)]
    rc, _, err = await run(rdr_cmd() + ["init", *c])
    assert rc == 0, err
    rc, out, err = await run(rdr_cmd() + ["hosts", "add", "pc1", "--kind", "pc", *c])
    assert rc == 0 and "(pc)" in out, err
    rc, out, err = await run(rdr_cmd() + ["hosts", "show", "pc1", *c])
    assert "retention 30-0-0" in out, out
    rc, out, err = await run(rdr_cmd() + ["hosts", "add", "web01", *c])
    assert rc == 0 and "(server)" in out
    rc, out, err = await run(rdr_cmd() + ["hosts", "set", "web01", "--policy", "3-2-1", *c])
    assert rc == 1 and "3-2-1 is not one of the contract's options" in err
    assert err.count("\n") == 1
    rc, out, err = await run(rdr_cmd() + ["hosts", "set", "web01", "--policy", "7-0-0", *c])
    assert rc == 0, err
    custom = config(tmp_path, "allow_custom_retention = true\n")
    rc, out, err = await run(rdr_cmd() + ["hosts", "set", "web01", "--policy", "3-2-1",
                                          "--config", str(custom)])
    assert rc == 0, err
