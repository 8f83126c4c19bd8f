"""The split measured (issue 13, item 6): the pure counting and judging of console/core/split.py,
the tailing checker of console/adapters/split_source.py, the [gates] split keys, and a real nginx
that hides a stopped canary behind proxy_next_upstream until the split gate rolls it back."""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from console.adapters.nginx.render import render_upstream
from console.adapters.split_source import INLINE_BYTES, SplitChecker, addresses_of, is_literal
from console.core.config import ConfigError, load_config
from console.core.events import ERROR, FAIL, INCONCLUSIVE, PASS, GateResult
from console.core.journal import read_records
from console.core.protocols import CheckContext
from console.core.split import SplitCounter, SplitPolicy, judge_split, parse_line
from console.core.state import DeploymentState
from console.sandbox.nginx_local import LOG_FORMAT
from tests.fixtures.nginx import NginxEnv, write_canary_toml
from tests.fixtures.real import journal_summary, wait_for

ROOT = Path(__file__).resolve().parents[1]
PROD, CAN = "127.0.0.1:8000", "127.0.0.1:8001"


def line(upstream: str, gen: str | None = "g1", ustatus: str = "200", request: str = "GET / HTTP/1.1") -> str:
    """A line in the shipped canary format (nginx/nginx.canary.conf)."""
    tail = f" gen={gen}" if gen is not None else ""
    return (f'127.0.0.1 [2024-05-01T10:00:00+00:00] "{request}" 200 61 rt=0.001 upstream={upstream} '
            f"ustatus={ustatus} urt=0.001{tail}")


def lines(canary: int, production: int, gen: str = "g1") -> list[str]:
    return [line(CAN, gen)] * canary + [line(PROD, gen)] * production


def counted(ls: list[str], window: int = 1000) -> SplitCounter:
    c = SplitCounter({PROD}, {CAN}, window=window)
    c.feed(ls)
    return c


def ctx(weight: int, generation: str = "g1", index: int = 0) -> CheckContext:
    return CheckContext(deployment_id="d", version="v0.2.0", index=index, weight=weight, stage_elapsed=1.0,
                        stage_wall_start=0.0, generation=generation)


# --------------------------------------------------------------------------- parsing


def test_a_line_of_the_shipped_format_gives_its_upstream_and_generation():
    r = parse_line(line(CAN, "v0.2.0-20240501T100000Z-ab12:3fa2c1"))
    assert r is not None and r.addresses == (CAN,) and r.generation == "v0.2.0-20240501T100000Z-ab12:3fa2c1"


def test_a_retry_lists_every_server_tried_and_an_internal_redirect_every_group():
    r = parse_line(line(f"{CAN}, {PROD}", ustatus="502, 200"))
    assert r is not None and r.addresses == (CAN, PROD)
    r = parse_line(line(f"{CAN}, {PROD} : unix:/run/app.sock", ustatus="502, 200 : 200"))
    assert r is not None and r.addresses == (CAN, PROD, "unix:/run/app.sock")


@pytest.mark.parametrize("text", [
    line("-"),  # served by nginx itself
    '127.0.0.1 - - [01/May/2024:10:00:00 +0000] "GET / HTTP/1.1" 200 61 "-" "curl/8"',  # the "main" format
    "",
    "garbage",
])
def test_lines_that_are_not_a_proxied_request_are_skipped(text):
    assert parse_line(text) is None
    c = counted([text])
    assert c.skipped == 1 and c.tally("g1") is None


def test_an_older_format_without_the_generation_is_parsed_and_counted_apart():
    r = parse_line(line(CAN, gen=None))
    assert r is not None and r.generation is None
    c = counted([line(CAN, gen=None)] * 3)
    assert c.unattributed == 3 and c.tally("g1") is None
    g = judge_split(c.tally("g1"), "g1", 5, SplitPolicy(), c.unattributed)
    assert g.verdict == INCONCLUSIVE and not g.blocking and "gen=$canary_generation" in g.detail


def test_a_request_line_cannot_forge_the_fields_that_follow_it():
    forged = line(PROD, "g1", request=f"GET /x upstream={CAN} gen=g1 HTTP/1.1")
    r = parse_line(forged)
    assert r is not None and r.addresses == (PROD,) and r.generation == "g1"


def test_the_shipped_log_formats_carry_the_fields_the_gate_reads():
    conf = (ROOT / "nginx" / "nginx.canary.conf").read_text()
    m = re.search(r"log_format canary (.*?);", conf, re.S)
    assert m is not None
    for fmt in (m.group(1), LOG_FORMAT):
        assert "upstream=$upstream_addr" in fmt and "gen=$canary_generation" in fmt


# --------------------------------------------------------------------------- counting


def test_a_retried_request_counts_for_the_server_that_answered_and_as_evidence():
    ls = [line(f"{CAN}, {PROD}", ustatus="502, 200")] * 7 + [line(f"{PROD}, {CAN}", ustatus="502, 200")] * 2
    t = counted(ls + lines(1, 90)).tally("g1")
    assert t is not None
    assert (t.requests, t.canary, t.production, t.other) == (100, 3, 97, 0)
    assert t.retried == 9 and t.retried_from_canary == 7


def test_other_generations_are_ignored():
    c = counted(lines(50, 50, "old") + lines(5, 95, "g1") + lines(100, 0, "newer"))
    t = c.tally("g1")
    assert t is not None and (t.requests, t.canary, t.production) == (100, 5, 95)
    g = judge_split(t, "g1", 5, SplitPolicy(min_requests=100))
    assert g.verdict == PASS and g.value == 5.0 and g.samples == 100


def test_an_address_that_is_neither_counts_in_the_share_and_is_named():
    t = counted(lines(5, 45) + [line("10.0.0.9:80")] * 50).tally("g1")
    assert t is not None and t.other == 50 and t.other_addresses == ["10.0.0.9:80"]
    g = judge_split(t, "g1", 10, SplitPolicy(min_requests=100))
    assert g.verdict == FAIL and g.value == 5.0


def test_no_request_to_either_address_is_not_judged():
    """[nginx] canary = app-canary:8000 that the console cannot resolve: nginx logs IPs."""
    t = counted([line("172.18.0.5:8000")] * 300).tally("g1")
    g = judge_split(t, "g1", 5, SplitPolicy())
    assert g.verdict == INCONCLUSIVE and not g.blocking and "172.18.0.5:8000" in g.detail


def test_memory_is_bounded_a_window_per_generation_and_a_few_generations():
    c = SplitCounter({PROD}, {CAN}, window=100, generations=2)
    c.feed(lines(0, 1000) + lines(100, 0))  # the last 100 are canary only
    t = c.tally("g1")
    assert t is not None and t.requests == 1100 and len(t.recent) == 100 and t.share == 100.0
    c.feed(lines(1, 1, "g2") + lines(1, 1, "g3"))
    assert c.tally("g1") is None and c.tally("g2") is not None and c.tally("g3") is not None


def test_the_window_follows_a_canary_that_stops():
    """A canary that stops after 10,000 good requests shows in the last window at once."""
    t = counted(lines(25, 75) * 100 + lines(0, 300)).tally("g1")
    assert t is not None
    g = judge_split(t, "g1", 25, SplitPolicy(window=1000))
    assert g.verdict == FAIL and g.value == pytest.approx(17.5) and g.samples == 10_300


# --------------------------------------------------------------------------- judging


@pytest.mark.parametrize(("canary", "verdict"), [
    (70, PASS), (71, FAIL),  # 7.0% is 2.0 points off 5%: not more than the tolerance
    (30, PASS), (29, FAIL),
    (50, PASS), (0, FAIL),
])
def test_tolerance_edges(canary, verdict):
    t = counted(lines(canary, 1000 - canary)).tally("g1")
    g = judge_split(t, "g1", 5, SplitPolicy(tolerance=2.0))
    assert g.verdict == verdict, g.detail
    assert g.value == pytest.approx(canary / 10) and g.threshold == 5.0 and g.samples == 1000
    assert g.gate == "split" and not g.critical and g.blocking


def test_below_min_requests_it_is_inconclusive_and_advisory():
    t = counted(lines(0, 199)).tally("g1")
    g = judge_split(t, "g1", 5, SplitPolicy(min_requests=200))
    assert g.verdict == INCONCLUSIVE and not g.blocking and g.samples == 199 and g.value == 0.0
    t.add("p", False, False, PROD)
    assert judge_split(t, "g1", 5, SplitPolicy(min_requests=200)).verdict == FAIL


def test_no_request_at_this_generation_is_inconclusive():
    g = judge_split(None, "g1", 5, SplitPolicy())
    assert g.verdict == INCONCLUSIVE and not g.blocking and g.samples == 0 and g.threshold == 5.0


def test_the_fail_names_the_retries_as_evidence():
    ls = [line(f"{CAN}, {PROD}", ustatus="502, 200")] * 3 + lines(0, 297)
    g = judge_split(counted(ls).tally("g1"), "g1", 5, SplitPolicy())
    assert g.verdict == FAIL and g.extra["retried_from_canary"] == 3
    assert "off by 5.0 points" in g.detail and "3 retried from the canary" in g.detail


def test_an_advisory_policy_never_fails():
    g = judge_split(counted(lines(0, 1000)).tally("g1"), "g1", 5, SplitPolicy(advisory="sticky"))
    assert g.verdict == INCONCLUSIVE and not g.blocking and "sticky" in g.detail


def test_the_result_survives_the_journal():
    g = judge_split(counted(lines(48, 952)).tally("g1"), "g1", 5, SplitPolicy())
    assert GateResult.from_dict(g.to_dict()) == g


# --------------------------------------------------------------------------- configuration


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "canary.toml"
    p.write_text(text)
    return p


def test_defaults(tmp_path):
    g = load_config(write(tmp_path, ""), environ={}, check_upstream_dir=False)["gates"]
    assert (g["split"], g["split_tolerance"], g["split_min_requests"], g["split_window"]) == (True, 2.0, 200, 1000)


@pytest.mark.parametrize(("body", "needle"), [
    ("split = 'yes'", "[gates] split"),
    ("split_tolerance = 0", "split_tolerance"),
    ("split_tolerance = -1.5", "split_tolerance"),
    ("split_tolerance = 101", "split_tolerance"),
    ("split_min_requests = 0", "split_min_requests"),
    ("split_min_requests = 2.5", "split_min_requests"),
    ("split_window = 100", "split_window"),  # fewer than split_min_requests (200)
])
def test_bad_values_are_one_line(tmp_path, body, needle):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, f"[gates]\n{body}\n"), environ={}, check_upstream_dir=False)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_bad_value_exits_2_with_one_line(tmp_path):
    cfg = write(tmp_path, "[gates]\nsplit_tolerance = 0\n")
    r = subprocess.run([sys.executable, "-m", "console.commands.cli", "--config", str(cfg), "deploy", "--version",
                        "v0.2.0", "--headless"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "split_tolerance" in r.stderr


def test_wiring_builds_the_gate_unless_off(tmp_path):
    from console.core.clock import RealClock
    from console.wiring import build_checkers

    log = tmp_path / "canary.log"

    def names(body: str, dry_run: bool = False) -> list[str]:
        cfg = load_config(write(tmp_path, f'[metrics]\nsource = "none"\n[nginx]\naccess_log = "{log}"\n{body}'),
                          environ={}, check_upstream_dir=False)
        checkers, _ = build_checkers(cfg, RealClock(), dry_run=dry_run)
        return [getattr(c, "name", type(c).__name__) for c in checkers]

    assert names("") == ["split"]  # with [metrics] source = "none" too
    assert names("", dry_run=True) == []  # nginx never moves in a dry run
    assert names("[gates]\nsplit = false\n") == []
    cfg = load_config(write(tmp_path, '[metrics]\nsource = "none"\n[nginx]\naccess_log = ""\n'), environ={},
                      check_upstream_dir=False)
    assert build_checkers(cfg, RealClock())[0] == []


# --------------------------------------------------------------------------- the checker on a file


def run(coro):
    return asyncio.run(coro)


def test_the_checker_tails_the_file_and_judges_the_current_generation(tmp_path):
    log = tmp_path / "canary.log"
    log.write_text("\n".join(lines(50, 50, "old")) + "\n")
    chk = SplitChecker(log, PROD, CAN, SplitPolicy(min_requests=100, window=200))
    try:
        assert run(chk.begin_stage(ctx(5))) == []
        with log.open("a") as f:
            f.write("\n".join(lines(5, 95)) + "\n")
        [g] = run(chk.check(ctx(5)))
        assert (g.verdict, g.value, g.samples) == (PASS, 5.0, 100)
        os.rename(log, tmp_path / "canary.log.1")  # logrotate's create
        log.write_text("\n".join(lines(5, 95)) + "\n")
        [g] = run(chk.check(ctx(5)))
        assert (g.verdict, g.value, g.samples) == (PASS, 5.0, 200)
        with log.open("a") as f:
            f.write("\n".join(lines(0, 200)) + "\n")
        [g] = run(chk.check(ctx(5)))
        assert g.verdict == FAIL and g.value == 0.0 and g.samples == 400  # the last 200 had no canary
    finally:
        run(chk.aclose())


def test_without_a_generation_in_the_context_it_reads_the_upstream_file(tmp_path):
    log, upstream = tmp_path / "canary.log", tmp_path / "upstream.conf"
    upstream.write_text(render_upstream("app", PROD, CAN, 25, "from-file"))
    log.write_text("\n".join(lines(50, 150, "from-file") + lines(200, 0, "other")) + "\n")
    chk = SplitChecker(log, PROD, CAN, SplitPolicy(), upstream_file=upstream)
    [g] = run(chk.check(ctx(25, generation="")))
    assert (g.verdict, g.value, g.extra["generation"]) == (PASS, 25.0, "from-file")
    run(chk.aclose())


def test_an_unreadable_log_is_an_advisory_error_and_one_note(tmp_path):
    log = tmp_path / "missing.log"
    chk = SplitChecker(log, PROD, CAN)
    notes = run(chk.begin_stage(ctx(5)))
    assert len(notes) == 1 and notes[0]["level"] == "warning" and str(log) in notes[0]["message"]
    assert run(chk.begin_stage(ctx(5, index=1))) == []  # said once
    [g] = run(chk.check(ctx(5)))
    assert g.verdict == ERROR and not g.blocking and str(log) in g.detail
    log.write_text("\n".join(lines(10, 190)) + "\n")  # nginx starts writing it
    [g] = run(chk.check(ctx(5)))
    assert g.verdict == PASS and g.samples == 200
    run(chk.aclose())


def test_a_backlog_is_read_in_a_thread_with_the_same_counts(tmp_path):
    log = tmp_path / "canary.log"
    log.write_text("\n".join(lines(250, 750) * 3) + "\n")  # about 400 KB: more than INLINE_BYTES
    assert log.stat().st_size > INLINE_BYTES
    chk = SplitChecker(log, PROD, CAN, SplitPolicy())
    [g] = run(chk.check(ctx(25)))
    assert (g.verdict, g.value, g.samples) == (PASS, 25.0, 3000)
    run(chk.aclose())


def test_addresses_are_matched_as_written_and_as_resolved():
    assert is_literal("127.0.0.1:8001") and is_literal("[::1]:8001") and is_literal("unix:/run/app.sock")
    assert not is_literal("app-canary:8000") and not is_literal("localhost:8001")
    assert addresses_of("localhost:8001") >= {"localhost:8001", "127.0.0.1:8001"}
    assert addresses_of("unix:/run/app.sock") == {"unix:/run/app.sock"}
    assert addresses_of("no-such-host.invalid:80") == {"no-such-host.invalid:80"}


def test_the_header_shows_the_measured_split_next_to_the_target():
    from console.ui.present import split_text

    g = judge_split(counted(lines(48, 952)).tally("g1"), "g1", 5, SplitPolicy())
    assert split_text(DeploymentState(weight=5, results=(g,))) == " · split 4.8% of 5%"
    bad = judge_split(counted(lines(0, 1000)).tally("g1"), "g1", 5, SplitPolicy())
    assert split_text(DeploymentState(weight=5, results=(bad.to_dict(),))) == " · split 0.0% of 5% ✗"
    assert split_text(DeploymentState(weight=25, results=(g,))) == ""  # measured for another weight
    assert split_text(DeploymentState(weight=5, results=(judge_split(None, "g1", 5, SplitPolicy()),))) == ""


# --------------------------------------------------------------------------- real nginx


class Traffic:
    """Requests through nginx from a thread, each on a fresh connection (so each lands on a worker
    of the current generation), until stopped; counts what the clients got back."""

    def __init__(self, env: NginxEnv) -> None:
        self.host, self.port = env.nginx.listen_host, env.nginx.listen_port
        self.stop = threading.Event()
        self.sent = self.failed = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                conn.request("GET", "/", headers={"Connection": "close"})
                status = conn.getresponse().status
                self.sent += 1
                self.failed += status != 200
            except OSError:
                self.failed += 1
            finally:
                conn.close()

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=15)


def checks(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("event") == "check"]


def split_of(check: dict) -> dict:
    return next(g for g in check["results"] if g["gate"] == "split")


@pytest.mark.real
def test_a_canary_stopped_behind_proxy_next_upstream_fails_the_split_gate_and_rolls_back(tmp_path, nginx_env):
    """nginx retries a refused canary on production (proxy_next_upstream error timeout, nginx's
    default and nginx_local's): clients see no error, the metric source is off, health is not
    asked; only the split gate sees it, within two checks, and the rollback names it."""
    env = nginx_env
    toml = write_canary_toml(
        tmp_path / "canary.toml", env,
        rollout={"stages": [25, 50, 100], "observation_period": 60.0, "check_interval": 0.25},
        metrics={"source": "none"}, health={"canary_url": ""},
        gates={"split_min_requests": 100, "split_window": 200, "consecutive_failures": 2},
    )
    journal = tmp_path / ".canary" / "journal.jsonl"

    def records() -> list[dict]:
        return list(read_records(journal)) if journal.exists() else []

    with Traffic(env) as traffic:
        proc = subprocess.Popen(
            [sys.executable, "-m", "console.commands.cli", "--config", str(toml), "deploy", "--version", "v0.2.0",
             "--headless", "--json", "--foreground", "--skip-checks"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            def passed_on_data() -> bool:
                return any(split_of(c)["verdict"] == PASS and c["weight"] == 25 for c in checks(records()))

            wait_for(lambda: passed_on_data() or proc.poll() is not None, 30, "the split gate passing at 25%")
            assert passed_on_data(), journal_summary(records(), verbose=True)
            before = len(checks(records()))
            served_before = env.backends.canary.served
            env.backends.canary.stop()  # connections to it are refused from now on
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    recs = records()
    summary = journal_summary(recs, verbose=True)
    assert proc.returncode == 3, f"{err}\n{summary}"
    rolled = next(r for r in recs if r.get("event") == "rolled_back")
    assert "split" in rolled["reason"], summary
    after = checks(recs)[before:]
    first_fail = next(i for i, c in enumerate(after, 1) if split_of(c)["verdict"] == FAIL)
    assert first_fail <= 2, summary
    g = split_of(after[first_fail - 1])
    assert g["value"] < 23 and g["threshold"] == 25 and g["samples"] >= 100
    assert g["extra"]["retried_from_canary"] >= 1  # nginx tried the canary and answered from production
    assert served_before > 0 and traffic.failed == 0  # no client saw the canary stop
    assert env.served_generation() == next(r["generation"] for r in reversed(recs) if r.get("event") == "router_applied")
