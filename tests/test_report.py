"""The incident report (docs/report.md): `canary-console report ID`, and the one every rollback writes.

The main test is a real rolled-back headless deploy: two demo-service processes, a real nginx,
Poisson traffic through it, the scrape source, the sequential analysis on, a loopback webhook
receiver, and the real CLI (``deploy --headless --json``).  Errors are injected into the canary
after its first check; the engine rolls back, writes ``reports/<id>.html`` beside the journal and
names it in the alert.  Then a second deploy is interrupted and rolled back by hand with
``canary-console rollback``, which writes that deployment's report after nginx serves 0%.
Assertions read the files: the deciding gate's value and threshold, and PNG charts decoded here
(signature, IHDR, CRCs, the IDAT inflated to the stated size, more than a background).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from console.core import events as ev
from console.core import report
from console.core.chart import Point, line_chart
from console.core.journal import Journal, read_records, tail_records
from console.sandbox.traffic import BackgroundTraffic
from tests.fixtures.demo_services import REPO, start_demo_stack
from tests.fixtures.nginx import write_canary_toml
from tests.fixtures.real import journal_summary, need_binary, port_listening, spawn_headless_deploy, stop_group, wait_for
from tests.test_notify import Receiver

RPS = 30.0
DEADLINE = 90.0


# --------------------------------------------------------------------------- a PNG, decoded


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, RGB pixels) of an 8-bit RGB PNG, every chunk's CRC checked; AssertionError if not one."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, f"CRC of {kind!r}"
        chunks.append((kind, body))
        pos += 12 + n
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, interlace) == (8, 2, 0), "8-bit RGB, not interlaced"
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = w * 3
    assert len(raw) == h * (stride + 1), "IDAT inflates to height x (1 + width x 3)"
    rows = [raw[y * (stride + 1):(y + 1) * (stride + 1)] for y in range(h)]
    assert all(r[0] == 0 for r in rows), "filter type 0 on every row"
    return w, h, b"".join(r[1:] for r in rows)


def assert_a_chart(data: bytes) -> tuple[int, int]:
    w, h, px = decode_png(data)
    assert w >= 100 and h >= 50, (w, h)
    colours = {px[i:i + 3] for i in range(0, len(px), 3)}
    ink = sum(px[i:i + 3] != b"\xff\xff\xff" for i in range(0, len(px), 3))
    assert len(colours) >= 3 and ink > w, f"not blank: {len(colours)} colours, {ink} non-white pixels"
    return w, h


def data_uri_pngs(html_text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)]


def facts(html_text: str, section: str) -> dict[str, str]:
    """The two-column facts table after ``<h2>section</h2>``."""
    part = html_text.split(f"<h2>{section}</h2>", 1)[1].split("<h2>", 1)[0]
    return dict(re.findall(r"<tr><th>([^<]*)</th><td>([^<]*)</td></tr>", part))


# --------------------------------------------------------------------------- the real run


@dataclass
class Run:
    dir: Path
    toml: Path
    journal: Path
    exit_code: int | None = None
    interrupted_code: int | None = None
    rollback: subprocess.CompletedProcess[str] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    output: str = ""
    error: str = ""

    def one(self, kind: str, version: str = "v0.2.0") -> dict[str, Any]:
        hits = [r for r in self.records if r.get("event") == kind and r.get("version") == version]
        assert len(hits) == 1, f"expected one {kind} of {version}: {self.summary()}"
        return hits[0]

    def summary(self) -> str:
        return f"exit {self.exit_code} {self.error}\n{journal_summary(self.records, 80)}\n{self.output[-1500:]}"


def cli(run: Run, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "console.commands.cli", "--config", str(run.toml), *argv],
                          capture_output=True, text=True, cwd=run.dir, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def first_check_of(journal: Path, version: str, deadline: float, proc: subprocess.Popen[bytes]) -> None:
    offset = 0

    def seen() -> bool:
        nonlocal offset
        new, offset = tail_records(journal, offset)
        if any(r.get("event") == "check" and r.get("version") == version for r in new):
            return True
        if proc.poll() is not None:
            raise AssertionError(f"deploy {version} exited with {proc.returncode} before its first check")
        return False

    wait_for(seen, timeout=max(1.0, deadline - time.monotonic()), what=f"the first check of {version}", interval=0.1)


def wait_exit(proc: subprocess.Popen[bytes], deadline: float) -> int:
    wait_for(lambda: proc.poll() is not None, timeout=max(1.0, deadline - time.monotonic()), what="the deploy to end",
             interval=0.1)
    return proc.returncode


def rolled_back_run(d: Path) -> Run:
    """The run the module's tests read; every process it starts is stopped before it returns."""
    need_binary("nginx")
    d.mkdir(parents=True, exist_ok=True)
    run = Run(d, d / "canary.toml", d / ".canary" / "journal.jsonl")
    with contextlib.ExitStack() as stack:
        try:
            prod, canary, env = start_demo_stack(stack, d, run.ports)
            receiver = Receiver()
            stack.callback(receiver.close)
            traffic = BackgroundTraffic(env.url, rps=RPS, mix={"fast": 1.0, "balanced": 1.0, "creative": 1.0}, seed=15)
            stack.callback(traffic.stop)
            traffic.start()
            write_canary_toml(
                run.toml, env,
                rollout={"stages": [20, 100], "observation_period": 60.0, "check_interval": 1.0},
                metrics={"source": "scrape", "rate_window": "10s", "min_requests": 5},
                gates={"consecutive_failures": 3},
                analysis={"enabled": True},
                notify={"webhook_url": receiver.url, "format": "generic"},
            )
            deadline = time.monotonic() + DEADLINE
            deploy = spawn_headless_deploy(run.toml, d, d / "deploy.out")
            stack.callback(stop_group, deploy)
            first_check_of(run.journal, "v0.2.0", deadline, deploy)
            canary.faults(error_rate=0.2)
            run.exit_code = wait_exit(deploy, deadline)
            wait_for(lambda: any(b.get("event") == "rolled_back" for b in receiver.bodies), timeout=15, what="the alert")
            canary.faults(error_rate=0.0)
            # a second deployment, interrupted (traffic stays at 20%), then rolled back by hand
            second = spawn_headless_deploy(run.toml, d, d / "second.out", version="v0.3.0")
            stack.callback(stop_group, second)
            first_check_of(run.journal, "v0.3.0", time.monotonic() + 30, second)
            os.killpg(second.pid, signal.SIGTERM)
            run.interrupted_code = wait_exit(second, time.monotonic() + 30)
            run.rollback = cli(run, "rollback", "--reason", "report test: by hand")
            run.bodies = list(receiver.bodies)
        except Exception as e:  # reported by the tests, after cleanup
            run.error = f"{type(e).__name__}: {e}"
    run.records = list(read_records(run.journal))
    run.output = "".join(p.read_text(errors="replace") for p in (d / "deploy.out", d / "second.out") if p.exists())
    return run


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    run = rolled_back_run(tmp_path_factory.mktemp("report-e2e"))
    assert not run.error, run.summary()
    assert not [p for p in run.ports if port_listening(p)], "every process of the run is gone"
    return run


@pytest.mark.real
def test_every_rollback_writes_its_report_beside_the_journal_with_the_deciding_gate_and_charts(real_run: Run) -> None:
    run = real_run
    assert run.exit_code == 3, run.summary()  # rolled back
    rb = ev.event_from_record(run.one("rolled_back"))
    assert isinstance(rb, ev.RolledBack) and rb.automatic
    path = run.dir / ".canary" / "reports" / f"{rb.deployment_id}.html"
    assert path.is_file(), run.summary()
    notes = [r["message"] for r in run.records if r.get("event") == "note" and r.get("version") == "v0.2.0"]
    assert f"incident report written to {path}" in notes
    text = path.read_text()
    gate = report.deciding_gate(rb)
    assert gate is not None and gate.value is not None and gate.threshold is not None, rb
    decided = facts(text, "What decided")
    assert decided["Deciding gate"].startswith(f"{gate.gate} (FAIL")
    assert decided["Value"] == report.fmt_value(gate.value) and decided["Threshold"] == report.fmt_value(gate.threshold)
    assert decided["Window"] == gate.window and decided["n (samples)"] == str(gate.samples)
    pngs = data_uri_pngs(text)
    assert len(pngs) >= 3, "a chart per gate with values"
    for png in pngs:
        assert_a_chart(png)
    # the timeline, who did what, the e-values and the replay command
    assert "ROLLED BACK (automatic)" in text and "engine (automatic)" in text
    assert "<h2>Sequential analysis</h2>" in text and "seq.errors" in text and "highest" in text
    replay = f"canary-console --config {run.toml} replay {rb.deployment_id}"
    assert f"<pre>{replay}</pre>" in text
    print(f"report {path.stat().st_size} bytes, {len(pngs)} charts; deciding gate {report.gate_line(gate)}")


@pytest.mark.real
def test_the_rollback_alert_names_the_report(real_run: Run) -> None:
    (body,) = [b for b in real_run.bodies if b.get("event") == "rolled_back"]
    path = real_run.dir / ".canary" / "reports" / f"{body['deployment_id']}.html"
    assert body["report"] == str(path)
    assert body["text"].endswith(f". Incident report: {path}")


@pytest.mark.real
def test_report_command_writes_markdown_with_png_files_beside_it(real_run: Run, tmp_path: Path) -> None:
    rb = real_run.one("rolled_back")
    out = tmp_path / "incident.md"
    done = cli(real_run, "report", rb["deployment_id"][:14], "--format", "md", "--output", str(out))  # a prefix names it
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"incident report of {rb['deployment_id']}: {out}")
    md = out.read_text()
    gate = report.deciding_gate(ev.event_from_record(rb))  # type: ignore[arg-type]
    assert gate is not None
    assert f"| Value | {report.fmt_value(gate.value)} |" in md and f"| Threshold | {report.fmt_value(gate.threshold)} |" in md
    links = re.findall(r"!\[[^]]*\]\((incident_files/[^)]+\.png)\)", md)
    assert links and f"incident_files/{report.safe_name(gate.gate)}.png" in links
    for link in links:
        assert_a_chart((tmp_path / link).read_bytes())
    # html to stdout's path, the default format, by "latest" (the manual rollback's deployment)
    done = cli(real_run, "report", "latest", "--output", str(tmp_path / "latest.html"))
    assert done.returncode == 0, done.stderr
    assert "Incident report: v0.3.0 rolled back" in (tmp_path / "latest.html").read_text()


@pytest.mark.real
def test_a_manual_rollback_writes_the_report_after_nginx_serves_0(real_run: Run) -> None:
    run = real_run
    assert run.interrupted_code == 130, run.summary()
    done = run.rollback
    assert done is not None and done.returncode == 0, done and done.stderr
    dep = run.one("rolled_back", "v0.3.0")["deployment_id"]
    path = run.dir / ".canary" / "reports" / f"{dep}.html"
    lines = done.stdout.splitlines()
    assert lines[0].startswith("rolled back: canary 0% / production 100%, nginx serves it")
    assert lines[1] == f"incident report: {path}"  # after the confirmation
    text = path.read_text()
    assert facts(text, "What decided")["Deciding gate"] == "none: a manual rollback"
    who = text.split("<h2>Who did what</h2>", 1)[1].split("<h2>", 1)[0]
    me = ev.Operator.current().label()
    assert f"<td>{me}</td><td>rollback</td><td>report test: by hand</td>" in who
    assert data_uri_pngs(text), "the interrupted deployment's gates, charted"


# --------------------------------------------------------------------------- bad input


def _journal(tmp_path: Path) -> Path:
    """A small real journal: one deployment that rolled back on error_rate."""
    jp = tmp_path / ".canary" / "journal.jsonl"
    common = {"deployment_id": "v0.2.0-20260101T000000Z-abcd", "version": "v0.2.0"}
    fail = ev.GateResult("error_rate", ev.FAIL, 0.052, 0.005, "5m", 120, detail="5xx ratio 5.2%")
    ok = ev.GateResult("error_rate", ev.PASS, 0.001, 0.005, "5m", 100)
    ts = [f"2026-01-01T00:00:{s:02d}.000Z" for s in range(10)]
    with Journal(jp) as j:
        j.append(ev.DeploymentStarted(ts=ts[0], stages=(5, 100), operator=ev.Operator("alice", "10.0.0.9"), **common),
                 ev.StageStarted(ts=ts[1], index=0, weight=5, total=2, observation_period=60, **common),
                 ev.CheckCompleted(ts=ts[2], index=0, weight=5, elapsed=1, results=(ok,), **common),
                 ev.CheckCompleted(ts=ts[3], index=0, weight=5, elapsed=2, results=(ok,), **common),
                 ev.CheckCompleted(ts=ts[4], index=0, weight=5, elapsed=3, results=(fail,), breaches={"error_rate": 3},
                                   consecutive_failures=3, decision="rollback", **common),
                 ev.RolledBack(ts=ts[5], reason="error_rate 0.052 vs threshold 0.005", from_weight=5, snapshot=(fail,),
                               **common))
    return jp


def _config(tmp_path: Path, jp: Path) -> Path:
    toml = tmp_path / "canary.toml"
    toml.write_text(f'[journal]\npath = "{jp}"\n')
    return toml


def _cli(toml: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "console.commands.cli", "--config", str(toml), "report", *argv],
                          capture_output=True, text=True, timeout=60, cwd=toml.parent,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def _files(d: Path) -> set[Path]:
    return {p for p in d.rglob("*") if p.is_file()}


def test_an_unknown_deployment_is_one_line_exit_2_and_nothing_written(tmp_path: Path) -> None:
    jp = _journal(tmp_path)
    toml = _config(tmp_path, jp)
    before = _files(tmp_path)
    done = _cli(toml, "v9.9.9")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert "no single deployment matches 'v9.9.9'" in done.stderr and "v0.2.0-20260101T000000Z-abcd" in done.stderr
    assert _files(tmp_path) == before


def test_an_unreadable_journal_is_one_line_exit_2(tmp_path: Path) -> None:
    missing = _cli(_config(tmp_path, tmp_path / "nowhere.jsonl"), "latest")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert f"no journal at {tmp_path / 'nowhere.jsonl'}" in missing.stderr
    folder = tmp_path / "a-folder.jsonl"
    folder.mkdir()
    before = _files(tmp_path)
    done = _cli(_config(tmp_path, folder), "latest")  # the config refuses it already
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "is not a regular file" in done.stderr, done.stderr
    assert _files(tmp_path) == before
    with pytest.raises(report.ReportError, match=f"^cannot read the journal {re.escape(str(folder))}: Is a directory$"):
        report.read_journal(folder)  # what the command says when the file goes away between the two (as root: no EACCES)


@pytest.mark.parametrize("fmt", ["html", "md"])
def test_an_unwritable_output_is_one_line_exit_2_and_nothing_written(tmp_path: Path, fmt: str) -> None:
    jp = _journal(tmp_path)
    toml = _config(tmp_path, jp)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    before = _files(tmp_path)
    for output, why in ((tmp_path / "a-file" / "r.html", "is not a directory"),
                        (tmp_path / "missing" / "r.html", "is not a directory"),
                        (tmp_path / "a-dir", "it is a directory")):
        done = _cli(toml, "latest", "--format", fmt, "--output", str(output))
        assert done.returncode == 2 and done.stdout == "", done.stderr
        assert done.stderr.count("\n") == 1 and f"cannot write the report to {output}" in done.stderr and why in done.stderr
    assert _files(tmp_path) == before
    assert not (tmp_path / "missing").exists()


def test_a_bad_format_is_one_line_exit_2(tmp_path: Path) -> None:
    done = _cli(_config(tmp_path, _journal(tmp_path)), "latest", "--format", "pdf")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "invalid choice: 'pdf'" in done.stderr


# --------------------------------------------------------------------------- the model and the chart


def test_the_model_folds_quiet_checks_and_names_who_did_what(tmp_path: Path) -> None:
    jp = _journal(tmp_path)
    recs = list(read_records(jp))
    r = report.build(recs, report.resolve(recs, "latest") or "", journal_path=jp)
    whats = [row.what for row in r.timeline]
    assert "1 check: no verdict changed" in whats  # the second check changed nothing
    assert any(w.startswith("check at 5% +3s: error_rate PASS -> FAIL: 0.052 against threshold 0.005 (window 5m, n=120)")
               and w.endswith("-> rollback") for w in whats)
    assert [(a.who, a.action) for a in r.actions] == [("alice@10.0.0.9", "started the deployment"),
                                                     ("engine (automatic)", "rolled back")]
    assert r.decision is not None and r.decision.gate is not None and r.decision.gate.gate == "error_rate"
    assert r.decision.breaches == 3 and r.decision.needed == 3
    assert r.replay_command == f"CANARY_JOURNAL={jp} canary-console replay v0.2.0-20260101T000000Z-abcd"
    assert report.resolve(recs, "abcd") == "v0.2.0-20260101T000000Z-abcd" and report.resolve(recs, "v9") is None


def test_the_chart_is_a_png_with_the_line_the_threshold_and_the_failures() -> None:
    pts = [Point(float(t), 0.001 * t, ev.FAIL if t == 9 else ev.PASS) for t in range(10)] + [Point(10.0, None, ev.ERROR)]
    w, h = assert_a_chart(line_chart(pts, threshold=0.005, stage_starts=[3.0], width=320, height=120))
    assert (w, h) == (320, 120)
    _, _, px = decode_png(line_chart(pts, threshold=0.005))
    colours = {px[i:i + 3] for i in range(0, len(px), 3)}
    assert {bytes((31, 100, 180)), bytes((200, 40, 40)), bytes((120, 120, 120))} <= colours  # line, threshold/FAIL, ERROR
    assert_a_chart(line_chart([Point(0.0, 1.0), Point(5.0, 3e4)], threshold=200.0, log=True))  # e-values
    assert_a_chart(line_chart([]))  # no data: axes only, still an image


def test_the_alert_text_and_facts_name_the_report() -> None:
    from console.adapters.webhook import alert_facts, payload, slack_payload

    rb = ev.RolledBack(deployment_id="d-1", version="v0.2.0", reason="error_rate 0.052 vs threshold 0.005",
                       from_weight=5, snapshot=(ev.GateResult("error_rate", ev.FAIL, 0.052, 0.005, "5m", 120),))
    where = str(report.report_path("/var/lib/canary/journal.jsonl", rb.deployment_id))
    assert where == "/var/lib/canary/reports/d-1.html"
    assert payload(rb, where)["report"] == where and payload(rb, where)["text"].endswith(f"Incident report: {where}")
    assert ("Incident report", where) in alert_facts(rb, 2, where).rows
    assert json.dumps(slack_payload(rb, 2, where)).count(where) >= 2  # a field and the fallback text
    assert "report" not in payload(rb) and "Incident report" not in payload(rb)["text"]  # no journal: no path


def test_the_break_glass_rollback_writes_the_report_too(tmp_path: Path) -> None:
    """The console's break-glass rollback (its engine is gone): the report once the router is at 0%
    (a fake router: the real path is the CLI rollback above; this is only where the call sits)."""
    from console.core.fakes import FakeRouter
    from console.core.manual import break_glass_rollback

    jp = tmp_path / ".canary" / "journal.jsonl"
    common = {"deployment_id": "v0.4.0-20260101T000000Z-beef", "version": "v0.4.0"}
    with Journal(jp) as j:
        j.append(ev.DeploymentStarted(stages=(5, 100), operator=ev.Operator("alice"), **common),
                 ev.StageStarted(index=0, weight=5, total=2, **common),
                 ev.RouterApplied(weight=5, **common),
                 ev.CheckCompleted(index=0, weight=5, elapsed=1, results=(ev.GateResult("error_rate", ev.PASS, 0.0, 0.005),),
                                   **common))
    router = FakeRouter(weight=5)
    res = break_glass_rollback(jp, lambda: router, "engine lost", ev.Operator("bob", "10.1.1.1"))
    assert router.applied == [0] and res.deployment_id == common["deployment_id"]
    text = report.report_path(jp, res.deployment_id).read_text()
    assert "<td>bob@10.1.1.1</td><td>rollback</td><td>break-glass: engine lost</td>" in text
    assert f"<pre>CANARY_JOURNAL={jp} canary-console replay {res.deployment_id}</pre>" in text
