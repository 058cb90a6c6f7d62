"""Replication throughput through the IPsec tunnel, against plain HTTP over the same tunnel.

One rig (real strongSwan between two namespaces, Swift with s3api in the data center's), one
data set; in the same run, alternately: `rdr replicate` of a fresh store holding the data
(encrypt, upload several objects at a time, checkpoint), and plain HTTP PUTs of the same bytes
with curl: one into the same Swift (its native API: the same server work at the other end,
the baseline of the ratio), one into a sink that discards them (the bare tunnel). The figure
that matters is the ratio (target >= 0.8): what the replication engine costs on top of moving
the bytes to the data center. On this rig both ends share 2 cores with two userspace IPsec
daemons, so absolute figures are far below real hardware and vary by +-15 % between runs.
Median of --runs runs. Needs root, strongSwan, Swift and curl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from appliance.store.datastore import CommitRequest, Datastore
from hil.swift import SwiftServer
from hil.tunnel import Tunnel, TunnelPlan
from rdr_format.catalog import FILE, CatalogWriter, Entry, Range
from rdr_format.chunkfile import ChunkEncoder
from rdr_format.manifest import StreamRef

RESULTS = Path(__file__).parent / "results"


class _Sink(BaseHTTPRequestHandler):
    def do_PUT(self) -> None:
        left = int(self.headers.get("Content-Length", 0))
        while left:
            left -= len(self.rfile.read(min(left, 1 << 20)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def sink_server(tunnel: Tunnel, ip: str) -> HTTPServer:
    """An HTTP PUT sink listening inside the data center's namespace."""
    server = HTTPServer((ip, 0), _Sink, bind_and_activate=False)
    server.socket.close()
    server.socket = tunnel.socket("dc")
    server.socket.bind((ip, 0))
    server.socket.listen(8)
    server.server_address = server.socket.getsockname()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def curl(tunnel: Tunnel, *args: str) -> str:
    out = tunnel.run("appliance", "curl", "-sS", "-f", "-o", "/dev/null", "-D", "-", *args,
                     capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"curl {args}: {out.stderr}")
    return out.stdout


def swift_token(tunnel: Tunnel, endpoint: str) -> tuple[str, str]:
    """tempauth's token and storage URL (Swift's native API) for the test account."""
    head = curl(tunnel, "-H", "X-Auth-User: test:tester", "-H", "X-Auth-Key: testing",
                f"{endpoint}/auth/v1.0")
    fields = {k.strip().lower(): v.strip() for k, _, v in
              (line.partition(":") for line in head.splitlines() if ":" in line)}
    return fields["x-auth-token"], fields["x-storage-url"]


def build_store(root: Path, payload: bytes) -> int:
    """A store with one snapshot holding `payload` in 4 MiB files; returns chunk bytes."""
    st = Datastore(root, reserve_bytes=0)
    st.add_host("bench")
    sid, _ = st.open_session("bench")
    enc = ChunkEncoder()
    entries = []
    step = 4 * 1024 * 1024
    for n, off in enumerate(range(0, len(payload), step)):
        part = payload[off:off + step]
        c = enc.encode(part)
        st.put_chunk("bench", sid, c.id, c.data)
        entries.append(Entry(f"f{n:04d}".encode(), FILE, 0o644, size=len(part),
                             ranges=[Range(c.id, 0, len(part), len(part))]))
    cat, idx = bytearray(), bytearray()
    CatalogWriter(cat.extend, idx.extend).add_block(b"", entries)
    cc, ic = enc.encode(bytes(cat)), enc.encode(bytes(idx))
    for c in (cc, ic):
        st.put_chunk("bench", sid, c.id, c.data)
    st.commit("bench", sid, CommitRequest(StreamRef([(cc.id, cc.plain_size)]),
                                          StreamRef([(ic.id, ic.plain_size)])))
    total = sum(p.stat().st_size for p in (root / "chunks").rglob("*") if p.is_file())
    st.close()
    return total


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks replication")
    ap.add_argument("--mb", type=int, default=200, help="data set size (MB)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=None,
                    help="uploads in flight (default: the appliance's default)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0 or not SwiftServer.available() or not shutil.which("curl"):
        print("needs root, Swift and curl (install .ci/swift-packages, .ci/tunnel-packages, "
              "curl)", file=sys.stderr)
        return 1
    rdr = str(Path(sys.executable).parent / "rdr")
    work = Path(tempfile.mkdtemp(prefix="rdr-bench-"))
    payload = os.urandom(args.mb * 1_000_000)
    (work / "payload.bin").write_bytes(payload)
    plan = TunnelPlan(prefix="rb" + secrets.token_hex(3))
    dc_ip = plan.dc_inner.split("/")[0]
    rows: dict[str, list[float]] = {"replication": [], "plain_http": [], "plain_http_sink": []}
    try:
        with Tunnel(work / "rig", plan) as tunnel:
            swift = SwiftServer(work / "swift", host=dc_ip, netns=tunnel.dc_ns)
            s3 = swift.start()
            sink = sink_server(tunnel, dc_ip)
            try:
                token, storage = swift_token(tunnel, s3.endpoint)
                curl(tunnel, "-X", "PUT", "-H", f"X-Auth-Token: {token}", f"{storage}/plain")
                for run in range(args.runs):
                    # Plain HTTP: the same bytes in one PUT over the same tunnel, into the
                    # same Swift, and into a sink.
                    t0 = time.perf_counter()
                    curl(tunnel, "-T", str(work / "payload.bin"), "-H",
                         f"X-Auth-Token: {token}", f"{storage}/plain/payload{run}")
                    rows["plain_http"].append(len(payload) / (time.perf_counter() - t0) / 1e6)
                    t0 = time.perf_counter()
                    curl(tunnel, "-T", str(work / "payload.bin"),
                         f"http://{dc_ip}:{sink.server_address[1]}/x")
                    rows["plain_http_sink"].append(
                        len(payload) / (time.perf_counter() - t0) / 1e6)
                    # Replication of a fresh store holding the same bytes, to a fresh bucket.
                    data = work / f"data{run}"
                    stored = build_store(data, payload)
                    cfg = work / f"a{run}.toml"
                    cfg.write_text(
                        f"[store]\npath = '{data}'\nreserve_mb = 0\n[replication]\n"
                        f"target = 's3'\nendpoint = '{s3.endpoint}'\nbucket = 'bench-{run}'\n"
                        f"access_key = '{s3.access_key}'\nsecret_key = '{s3.secret_key}'\n"
                        f"region = '{s3.region}'\ntunnel_subnet = '{plan.dc_subnet}'\n"
                        + (f"concurrency = {args.concurrency}\n" if args.concurrency else ""))
                    out = tunnel.run("appliance", rdr, "replicate", "--json", "--config",
                                     str(cfg), capture_output=True, text=True)
                    if out.returncode:
                        raise RuntimeError(out.stderr)
                    res = json.loads(out.stdout)
                    assert res["snapshots_replicated"] == 1, res
                    # The pass itself, as the daemon runs it (not the CLI's start-up).
                    rows["replication"].append(stored / res["seconds"] / 1e6)
                    shutil.rmtree(data)
            finally:
                sink.shutdown()
                swift.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rep = statistics.median(rows["replication"])
    plain = statistics.median(rows["plain_http"])
    sink_mbps = statistics.median(rows["plain_http_sink"])
    result = {"benchmark": "replication_through_tunnel", "mb": args.mb, "runs": args.runs,
              "replication_MBps": rows["replication"], "plain_http_MBps": rows["plain_http"],
              "plain_http_sink_MBps": rows["plain_http_sink"],
              "median_replication_MBps": rep, "median_plain_http_MBps": plain,
              "median_plain_http_sink_MBps": sink_mbps,
              "ratio": rep / plain, "ratio_to_sink": rep / sink_mbps, "target_ratio": 0.8,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "kernel": platform.release()},
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "replication_tunnel.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"| through the IPsec tunnel ({args.mb} MB, median of {args.runs}) | MB/s |\n"
          f"|---|---|\n| plain HTTP PUT (curl) into the same Swift | {plain:.1f} |\n"
          f"| plain HTTP PUT (curl) into a sink that discards | {sink_mbps:.1f} |\n"
          f"| rdr replicate (encrypted, S3 API, checkpointed) | {rep:.1f} |\n"
          f"| ratio to the same-Swift PUT | {rep / plain:.2f} (target >= 0.8) |\n"
          f"| ratio to the sink | {rep / sink_mbps:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
