"""The suite's results as JUnit XML (for CI) and a Markdown report (for people)."""

from __future__ import annotations

import platform
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from hil.scenarios import Result


def junit(results: list[Result], suite: str) -> str:
    failures = sum(not r.passed and not r.skipped for r in results)
    root = ET.Element("testsuite", name=suite, tests=str(len(results)),
                      failures=str(failures), skipped=str(sum(r.skipped for r in results)),
                      time=f"{sum(r.seconds for r in results):.1f}")
    for r in results:
        case = ET.SubElement(root, "testcase", classname=suite, name=r.name,
                             time=f"{r.seconds:.1f}")
        if r.skipped:
            ET.SubElement(case, "skipped", message=r.error)
        elif not r.passed:
            ET.SubElement(case, "failure", message=r.error[:500]).text = r.error
        out = "\n".join(r.notes + [f"{k} = {v}" for k, v in r.measures.items()])
        ET.SubElement(case, "system-out").text = out
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _rate(key: str, value: float) -> str:
    """backup_mb_s -> "backup 12.0 MB/s", replicate_mbit_s -> "replicate 8.0 Mbit/s"."""
    for suffix, unit in (("_mbit_s", "Mbit/s"), ("_mb_s", "MB/s")):
        if key.endswith(suffix):
            return f"{key.removesuffix(suffix).replace('_', ' ')} {value} {unit}"
    return f"{key} {value}"


def markdown(results: list[Result], *, rig: str, quick: bool, setup_s: float) -> str:
    ok = sum(r.passed for r in results)
    skipped = sum(r.skipped for r in results)
    lines = [
        f"# HIL report: {'quick' if quick else 'full'} suite on the {rig} rig",
        "",
        f"- run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()} "
        f"({platform.machine()}, {platform.python_version()})",
        f"- result: **{ok} of {len(results) - skipped} scenarios passed**"
        + (f" ({skipped} skipped)" if skipped else "") + f"; rig setup {setup_s:.0f} s, "
        f"scenarios {sum(r.seconds for r in results):.0f} s",
    ]
    said = [r.measures["offsite_immutable"] for r in results if "offsite_immutable" in r.measures]
    if said:
        lines.append("- off-site copy: " + (
            "**immutable** (the data center's bucket has S3 Object Lock; every object written "
            "in compliance mode, `immutable: true` in `rdr replication status`)"
            if all(v == "yes" for v in said) else
            f"**not immutable** (`rdr replication status` said {', '.join(sorted(set(said)))})"))
    lines += [
        "",
        "Throughputs include each command's start-up (a few hundred ms of Python per agent "
        "or `rdr` run); recovery times run from the end of the fault to the appliance (or "
        "tunnel) working again.",
        "",
        "| scenario | result | time (s) | throughput | recovery | other measures |",
        "|---|---|---:|---|---|---|",
    ]
    for r in results:
        m = dict(r.measures)
        thr = ", ".join(_rate(k, m.pop(k)) for k in list(m)
                        if k.endswith("_mb_s") or k.endswith("_mbit_s"))
        rec = ", ".join(f"{k.replace('_s', '').replace('_', ' ')} {m.pop(k)} s"
                        for k in list(m) if k.startswith("recovery"))
        other = ", ".join(f"{k} {v}" for k, v in m.items())
        verdict = "PASS" if r.passed else ("skip" if r.skipped else "**FAIL**")
        lines.append(f"| {r.name} | {verdict} | {r.seconds:.0f} | {thr} | {rec} | {other} |")
    lines += ["", "## Details", ""]
    for r in results:
        lines.append(f"### {r.name}: "
                     f"{'PASS' if r.passed else ('skipped' if r.skipped else 'FAIL')}")
        lines += [f"- {n}" for n in r.notes]
        if r.error:
            lines.append(f"- error: `{r.error[:1500]}`")
        lines.append("")
    return "\n".join(lines)


def write(out: Path, results: list[Result], *, rig: str, quick: bool, setup_s: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "junit.xml").write_text(junit(results, "hil"))
    (out / "report.md").write_text(markdown(results, rig=rig, quick=quick, setup_s=setup_s))
