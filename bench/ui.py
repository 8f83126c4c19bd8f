"""How the operator console behaves in a real terminal: the real `canary-console` in a
pseudo-terminal (the pty module) at 80x24, reading what it writes.

Two consoles are measured, against a bare Textual app (a Header, one Static line, a Footer)
started the same way on the same pty, run by run, so that the startup figures are ratios:

  replay   `canary-console replay ID` on a recorded journal (a rolled-back deployment, 95
           events): nothing changes once it is drawn.
  live     `canary-console deploy --dry-run` (the engine detached, as operators run it) against
           two real demo-service processes with traffic, metrics scraped every second
           (check_interval = 1), and the NGINX canary access log pane tailing a file this
           script writes to.  The access-log pane is brought on show (tab, tab).

Figures (targets in brackets):
  startup to first complete frame, p95            replay [<= 1.3x the bare app's p95]
  startup to first frame, median of --live-runs   live [<= 2.5x the bare app's median]
  keypress `?` to the help screen on the wire, p95 replay [<= 50 ms]
  keypress `?` p95 while 5,000 lines/s flood the on-show pane [<= 100 ms]
  CPU of the console process: replay idle [<= 0.5%]; live, 1 Hz metrics + 50 lines/s [<= 3%]
  terminal output bytes/s: replay idle; live, 1 Hz metrics + 50 lines/s [<= 5 KB/s]
  RSS after 1,000,000 log lines through the tail pane [<= 80 MB]

    .venv/bin/python bench/ui.py [--runs 20] [--live-runs 5] [--presses 30] [--window 20] [--lines 1000000] [--json]

Everything started here (consoles, engines, demo services, writer threads) is stopped on every
exit path.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from console.core.journal import Journal, read_records  # noqa: E402
from console.ui.testing import DEP, rolled_back  # noqa: E402
from tests.fixtures.demo_services import DemoService, start_demo_service  # noqa: E402

CLI = str(Path(sys.executable).parent / "canary-console")
TICK = os.sysconf("SC_CLK_TCK")
TARGET_REPLAY_RATIO = 1.3  # replay's first complete frame, p95, over the bare app's
TARGET_LIVE_RATIO = 2.5  # deploy (engine detached), median, over the bare app's
TARGET_STEADY_CPU = 3.0  # % of a core, metrics at 1 Hz + 50 log lines/s

# The baseline: the least a Textual console draws, started like the console (a pty, TERM, the
# byte-code cache); its first frame is complete once the static line and the footer's key are out.
BARE_APP = """
from textual.app import App
from textual.widgets import Footer, Header, Static

class Bare(App):
    BINDINGS = [("q", "quit", "Quit")]

    def compose(self):
        yield Header()
        yield Static("bare textual baseline")
        yield Footer()

Bare().run()
"""
BARE_FRAME = (b"bare textual baseline", b"Quit")
PYCACHE: Path | None = None  # set in main(): a private byte-code cache for the consoles started here


# ---------------------------------------------------------------------------- a terminal
class Term:
    """``argv`` on a pty of ``cols`` x ``rows``; every byte it writes is kept with its time."""

    def __init__(self, argv: list[str], cwd: Path, cols: int = 80, rows: int = 24) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {k: v for k, v in os.environ.items()
               if k not in ("NO_COLOR", "TMUX", "COLUMNS", "LINES", "PYTHONDONTWRITEBYTECODE")}
        env["TERM"] = "xterm-256color"
        if PYCACHE is not None:  # byte-compiled once, like an installed package (not compiled at every start)
            env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env,
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.buf = bytearray()
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                data = b""
            with self.cond:
                if not data:
                    self.cond.notify_all()
                    return
                self.buf += data
                self.cond.notify_all()

    @property
    def size(self) -> int:
        return len(self.buf)

    def wait(self, *markers: bytes, since: int = 0, timeout: float = 30.0) -> float:
        """Monotonic time at which every marker had appeared after ``since``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if all(self.buf.find(m, since) >= 0 for m in markers):
                    return time.monotonic()
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    tail = bytes(self.buf[-600:]).decode("utf-8", "replace")
                    raise TimeoutError(f"{markers} not seen within {timeout:g}s; last output: {tail!r}")
                self.cond.wait(min(left, 0.05))

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def cpu(self) -> float:
        """Seconds of CPU the console process used (user + system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def memory(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MB."""
        vals = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                vals[k] = int(v.split()[0]) / 1024
        return vals["VmRSS"], vals["VmHWM"]

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self.master)
        self.reader.join(2)


def p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(0.95 * len(s)) - 1))]


def summary(xs: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(xs) * 1000, 1), "p95_ms": round(p95(xs) * 1000, 1),
            "max_ms": round(max(xs) * 1000, 1), "n": len(xs)}


# ---------------------------------------------------------------------------- measurements
def press_help(term: Term, presses: int, settle: float = 0.5) -> list[float]:
    """``?`` until the help screen is on the wire (its title, "Keys"), ``presses`` times.

    Between presses: escape closes the help (escape does nothing on the main screen, so the
    sequence cannot drift into another dialog), then a pause lets the screen settle and keeps
    the escape from merging with the next key into an alt-sequence.  Only the ``?`` is timed."""
    out = []
    for _ in range(presses):
        term.send(b"\x1b")
        time.sleep(settle)  # a pause between keystrokes, not a synchronisation
        pos = term.size
        t = time.monotonic()
        term.send(b"?")
        out.append(term.wait(b"Keys", since=pos, timeout=10) - t)
    term.send(b"\x1b")
    time.sleep(settle)
    return out


def window(term: Term, seconds: float) -> tuple[float, float]:
    """(CPU % of one core, output bytes/s) of the console over ``seconds``."""
    c0, b0, t0 = term.cpu(), term.size, time.monotonic()
    time.sleep(seconds)  # a measurement window, not a synchronisation
    c1, b1, t1 = term.cpu(), term.size, time.monotonic()
    return 100 * (c1 - c0) / (t1 - t0), (b1 - b0) / (t1 - t0)


class Writer:
    """Appends access-log lines at ``rate`` lines/s (in 20 ms batches) until stopped."""

    LINE = ('127.0.0.1 - - [01/Jan/2026:00:00:00 +0000] "POST /api/generate HTTP/1.1" 200 412 "-" "bench" '
            'upstream=127.0.0.1:8001 rt=0.041 canary {n}\n')

    def __init__(self, path: Path, rate: float, total: int | None = None, marker: str = "") -> None:
        self.path, self.rate, self.total, self.marker = path, rate, total, marker
        self.written = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with open(self.path, "a", buffering=1 << 20) as f:
            start = time.monotonic()
            while not self.stop.is_set():
                due = int((time.monotonic() - start) * self.rate)
                if self.total is not None:
                    due = min(due, self.total)
                if due > self.written:
                    f.write("".join(self.LINE.format(n=i) for i in range(self.written, due)))
                    f.flush()
                    self.written = due
                if self.total is not None and self.written >= self.total:
                    if self.marker:
                        f.write(self.marker + "\n")
                        f.flush()
                    return
                self.stop.wait(0.02)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def traffic(services: list[DemoService], stop: threading.Event, rps: float = 10.0) -> None:
    """POST /api/generate to each service, cycling the modes, so the gates have data."""
    modes = ("fast", "balanced", "creative")
    i = 0
    while not stop.is_set():
        for svc in services:
            body = json.dumps({"mode": modes[i % 3], "notes": ["rose"]}).encode()
            req = urllib.request.Request(f"{svc.url}/api/generate", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            with contextlib.suppress(OSError):
                urllib.request.urlopen(req, timeout=5).read()
        i += 1
        stop.wait(1.0 / rps)


# ---------------------------------------------------------------------------- scenarios
def bare_start(tmp: Path) -> float:
    """Seconds from the bare app's process start to its first complete frame."""
    term = Term([sys.executable, "-c", BARE_APP], tmp)
    try:
        return term.wait(*BARE_FRAME, timeout=30) - term.t0
    finally:
        term.close()


def replay_bench(tmp: Path, runs: int, presses: int, idle_s: float) -> dict[str, Any]:
    jp = tmp / "replay" / "journal.jsonl"
    jp.parent.mkdir(parents=True)
    with Journal(jp) as j:
        for e in rolled_back().events:
            j.append(e)
    cfg = tmp / "replay" / "canary.toml"
    cfg.write_text(f'[journal]\npath = "{jp}"\n[nginx]\nupstream_file = "{tmp / "replay" / "upstream.conf"}"\n')
    argv = [CLI, "--config", str(cfg), "replay", DEP]
    frame = (b"ROLLED BACK", b"Quit", b"nginx serves canary 0%")
    warm = Term(argv, tmp)  # not timed: fills the byte-code cache
    try:
        warm.wait(*frame, timeout=120)
    finally:
        warm.close()
    bare_start(tmp)  # not timed: the same for the bare app
    starts, bare = [], []
    for _ in range(runs):  # interleaved with the bare app, run by run
        term = Term(argv, tmp)
        try:
            starts.append(term.wait(*frame, timeout=30) - term.t0)
        finally:
            term.close()
        bare.append(bare_start(tmp))
    term = Term(argv, tmp)
    try:
        term.wait(*frame, timeout=30)
        time.sleep(1.0)  # let the first frame settle before timing keys
        keys = press_help(term, presses)
        time.sleep(1.0)
        cpu, bps = window(term, idle_s)
    finally:
        term.close()
    return {"startup": summary(starts), "bare_startup": summary(bare),
            "startup_over_bare_p95": round(p95(starts) / p95(bare), 2),
            "startup_over_bare_median": round(statistics.median(starts) / statistics.median(bare), 2),
            "keypress_help": summary(keys),
            "idle_cpu_pct": round(cpu, 2),
            "idle_output_bytes_per_s": round(bps, 1)}


LIVE_FRAME = (b"OBSERVING", b"Quit", b"engine events")


def live_start(d: Path, cfg_text: str, k: int) -> tuple[float, float]:
    """(seconds from `deploy`'s start to its first frame, the bare app's), the deploy with a
    journal of its own; its engine is stopped after."""
    cfg = d / f"canary-start-{k}.toml"
    journal = d / f"journal-start-{k}.jsonl"
    cfg.write_text(cfg_text.replace(f'path = "{d / "journal.jsonl"}"', f'path = "{journal}"'))
    argv = [CLI, "--config", str(cfg), "deploy", "--version", "v0.2.0", "--dry-run", "--skip-checks"]
    term = Term(argv, d)
    try:
        took = term.wait(*LIVE_FRAME, timeout=60) - term.t0
    finally:
        _quit_live(term)
        term.close()
        _stop_engines(journal)
    return took, bare_start(d)


def live_bench(tmp: Path, presses: int, window_s: float, lines: int, runs: int = 5) -> dict[str, Any]:
    d = tmp / "live"
    (d / "nginx").mkdir(parents=True)
    access = d / "canary.log"
    access.write_text("")
    services: list[DemoService] = []
    stop_traffic = threading.Event()
    term: Term | None = None
    writers: list[Writer] = []
    try:
        prod = start_demo_service(d, "production", "0.1.0")
        services.append(prod)
        can = start_demo_service(d, "canary", "0.2.0")
        services.append(can)
        threading.Thread(target=traffic, args=(services, stop_traffic), daemon=True).start()
        cfg = d / "canary.toml"
        cfg_text = (
            "[rollout]\nstages = [1, 5, 25, 100]\nobservation_period = 3600.0\ncheck_interval = 1.0\n"
            f'[nginx]\nupstream_file = "{d / "nginx" / "upstream.conf"}"\naccess_log = "{access}"\nverify_url = ""\n'
            f'[health]\nproduction_url = "{prod.health_url}"\ncanary_url = "{can.health_url}"\ntimeout = 2.0\n'
            f'[journal]\npath = "{d / "journal.jsonl"}"\n'
            '[metrics]\nsource = "scrape"\nrate_window = "60s"\nmin_requests = 5\n'
            f'[scrape]\nproduction = "{prod.metrics_url}"\ncanary = "{can.metrics_url}"\ntimeout = 2.0\n'
            "[docker]\nenabled = false\n")
        cfg.write_text(cfg_text)
        live_start(d, cfg_text, -1)  # not timed: byte-compiles what only the engine loads
        starts = [live_start(d, cfg_text, k) for k in range(runs)]  # interleaved with the bare app
        argv = [CLI, "--config", str(cfg), "deploy", "--version", "v0.2.0", "--dry-run", "--skip-checks"]
        if not (PYCACHE and PYCACHE.exists()):  # the byte-code cache is filled by the replay warm-up
            print("bench: no warm byte-code cache; the live startup figure includes compiling", file=sys.stderr)
        term = Term(argv, d)
        t_first = term.wait(*LIVE_FRAME, timeout=60) - term.t0
        term.wait(b"error_rate", timeout=30)  # the first check is on screen
        pos = term.size
        term.send(b"\t\t")  # gates -> sparklines -> the access-log pane, brought on show
        term.wait(b"nginx canary access log", since=pos, timeout=10)
        time.sleep(2.0)
        cpu_metrics, bps_metrics = window(term, window_s)
        w = Writer(access, 50)
        writers.append(w)
        time.sleep(2.0)
        cpu_steady, bps_steady = window(term, window_s)
        w.close()
        flood = Writer(access, 5000)
        writers.append(flood)
        time.sleep(2.0)
        keys_flood = press_help(term, presses)
        flood.close()
        # one million lines through the pane, as fast as the pane takes them (the tail waits on it)
        marker = f"END-OF-BENCH-{os.getpid()}"
        million = Writer(access, 200_000, total=lines, marker=marker)
        writers.append(million)
        t0 = time.monotonic()
        million.thread.join(600)
        pos_all = 0
        term.wait(marker.encode(), since=pos_all, timeout=600)
        took = time.monotonic() - t0
        rss, hwm = term.memory()
        live_s, bare_s = [a for a, _ in starts], [b for _, b in starts]
        return {"startup_first_frame_ms": round(t_first * 1000, 1), "startup": summary(live_s),
                "bare_startup": summary(bare_s),
                "startup_over_bare_median": round(statistics.median(live_s) / statistics.median(bare_s), 2),
                "metrics_1hz_cpu_pct": round(cpu_metrics, 2), "metrics_1hz_output_bytes_per_s": round(bps_metrics, 1),
                "steady_cpu_pct": round(cpu_steady, 2), "steady_output_bytes_per_s": round(bps_steady, 1),
                "keypress_help_during_5000_lines_per_s": summary(keys_flood),
                "million_lines_s": round(took, 1), "rss_after_million_mb": round(rss, 1), "rss_peak_mb": round(hwm, 1)}
    finally:
        for w in writers:
            w.close()
        if term is not None:
            _quit_live(term)
            term.close()
        stop_traffic.set()
        for svc in services:
            svc.stop()
        _stop_engines(d / "journal.jsonl")


def _quit_live(term: Term) -> None:
    """q, then s: stop the (dry-run) engine and exit (SIGTERM in ``close`` otherwise)."""
    if term.proc.poll() is not None:
        return
    with contextlib.suppress(OSError, TimeoutError):
        pos = term.size
        term.send(b"q")
        term.wait(b"Stop the engine", since=pos, timeout=5)
        term.send(b"s")
        term.proc.wait(10)


def _stop_engines(journal: Path) -> None:
    pids = {r.get("engine_pid") for r in read_records(journal) if r.get("event") == "deployment_started"}
    for pid in pids:
        if pid and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)  # polling interval of a deadline loop
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="startups of the replay console (20)")
    ap.add_argument("--live-runs", type=int, default=5, help="startups of the live console (5)")
    ap.add_argument("--presses", type=int, default=30, help="keypresses per measurement (30)")
    ap.add_argument("--window", type=float, default=20.0, help="seconds per CPU / output window (20)")
    ap.add_argument("--lines", type=int, default=1_000_000, help="log lines through the pane for the RSS figure")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    ap.add_argument("--only", choices=("replay", "live"), help="run one of the two consoles (prints JSON)")
    args = ap.parse_args()
    global PYCACHE
    with tempfile.TemporaryDirectory(prefix="cc-bench-ui-") as t:
        tmp = Path(t)
        PYCACHE = tmp / "pycache"
        if args.only:
            fn = {"replay": lambda: replay_bench(tmp, args.runs, args.presses, args.window),
                  "live": lambda: live_bench(tmp, args.presses, args.window, args.lines, args.live_runs)}[args.only]
            print(json.dumps(fn(), indent=2))
            return 0
        replay = replay_bench(tmp, args.runs, args.presses, args.window)
        live = live_bench(tmp, args.presses, args.window, args.lines, args.live_runs)
    out = {"terminal": "80x24", "replay": replay, "live": live}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    r, lv = replay, live
    ok = {True: "met", False: "MISSED"}
    rows = [
        ("startup to first complete frame (replay), p95", f"{r['startup']['p95_ms']} ms", "-"),
        ("  the bare Textual app, p95, interleaved", f"{r['bare_startup']['p95_ms']} ms", "-"),
        ("  replay / bare, median (for reference)", f"{r['startup_over_bare_median']}x", "-"),
        ("  replay / bare, p95", f"{r['startup_over_bare_p95']}x",
         f"<= {TARGET_REPLAY_RATIO}x: {ok[r['startup_over_bare_p95'] <= TARGET_REPLAY_RATIO]}"),
        (f"startup to first frame (deploy --dry-run, engine detached), median of {lv['startup']['n']}",
         f"{lv['startup']['p50_ms']} ms", "-"),
        ("  the bare Textual app, median, interleaved", f"{lv['bare_startup']['p50_ms']} ms", "-"),
        ("  deploy / bare", f"{lv['startup_over_bare_median']}x",
         f"<= {TARGET_LIVE_RATIO}x: {ok[lv['startup_over_bare_median'] <= TARGET_LIVE_RATIO]}"),
        ("keypress ? to visible change, p95", f"{r['keypress_help']['p95_ms']} ms", "<= 50 ms"),
        ("keypress ? p95 while 5,000 lines/s flood the pane", f"{lv['keypress_help_during_5000_lines_per_s']['p95_ms']} ms",
         "<= 100 ms"),
        ("CPU, nothing changes (replay)", f"{r['idle_cpu_pct']} %", "<= 0.5 %"),
        ("CPU, metrics at 1 Hz, no log lines", f"{lv['metrics_1hz_cpu_pct']} %", "-"),
        ("CPU, metrics at 1 Hz + 50 log lines/s", f"{lv['steady_cpu_pct']} %",
         f"<= {TARGET_STEADY_CPU:g} %: {ok[lv['steady_cpu_pct'] <= TARGET_STEADY_CPU]}"),
        ("output, nothing changes (replay)", f"{r['idle_output_bytes_per_s']} B/s", "-"),
        ("output, metrics at 1 Hz, no log lines", f"{lv['metrics_1hz_output_bytes_per_s']} B/s", "-"),
        ("output, metrics at 1 Hz + 50 log lines/s", f"{lv['steady_output_bytes_per_s']} B/s", "<= 5 KB/s"),
        (f"RSS after {args.lines:,} log lines through the pane", f"{lv['rss_after_million_mb']} MB "
         f"(peak {lv['rss_peak_mb']} MB, {lv['million_lines_s']} s)", "<= 80 MB"),
    ]
    w = max(len(a) for a, _, _ in rows)
    for a, b, c in rows:
        print(f"{a:<{w}}  {b:>28}  {c}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
