"""What the header says about a detached engine's link: attached, engine pid and host, latency."""

from __future__ import annotations

from dataclasses import replace

from console.core.protocols import LinkStatus
from console.ui.present import latency_bucket, link_note

UP = LinkStatus(attached=True, role="driver", engine_pid=4242, engine_host="deploy-1", deployment_id="d", version="v0.2.0",
                latency_ms=0.4, driver="alice", note="", lost="", exit_code=None)


def test_attached_driver_sees_engine_pid_host_and_link_latency():
    assert link_note(UP) == "engine pid 4242@deploy-1 link <1ms"
    assert link_note(replace(UP, latency_ms=37.0)) == "engine pid 4242@deploy-1 link <50ms"
    assert link_note(replace(UP, latency_ms=None)).endswith("link untimed")


def test_latency_moves_the_header_only_when_its_step_changes():
    assert latency_bucket(21.0) == latency_bucket(49.9) == "<50ms"
    assert latency_bucket(50.0) == "<100ms" and latency_bucket(2500) == ">1s"


def test_lost_and_watching_are_said_first():
    assert link_note(replace(UP, lost="engine pid 4242 stopped answering")).startswith("ENGINE LOST")
    assert link_note(replace(UP, role="watcher", note="bob drives")) == "now watching: bob drives"
