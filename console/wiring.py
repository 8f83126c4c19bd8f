"""The composition root: builds the real adapters and the engine from a Config.

The only place that knows which adapter serves which Protocol, so tests can build an Engine
with fakes instead.  It sits above core and adapters (core may not import adapters) and below
commands, remote and the sandbox, which call it.  Importing it is cheap: each adapter, and the
engine itself, is imported by the function that builds it, so `rollback` loads only the router."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from console.core import events as ev
from console.core.clock import Clock, RealClock
from console.core.config import Config
from console.core.journal import Journal
from console.core.protocols import Checker, ImageTagger, MetricSource, TrafficRouter

if TYPE_CHECKING:
    from console.core.engine import Engine


def build_router(cfg: Config) -> TrafficRouter:
    from console.adapters.nginx.router import NginxRouter

    return NginxRouter.from_config(cfg)


def build_tagger(cfg: Config) -> ImageTagger | None:
    """The Docker adapter that tags a promoted image, when ``[docker] enabled``."""
    if not cfg["docker"]["enabled"]:
        return None
    from console.adapters.docker import DockerAdapter

    return DockerAdapter(cfg)


def build_source(cfg: Config, clock: Clock) -> MetricSource | None:
    if cfg["metrics"]["source"] == "none":
        return None
    from console.adapters.metrics import build_source as _build

    return _build(cfg, clock)


def build_checkers(cfg: Config, clock: Clock) -> tuple[list[Checker], MetricSource | None]:
    source = build_source(cfg, clock)
    if source is None:
        return [], None
    from console.core.gates import MetricGates

    checkers: list[Checker] = [MetricGates(cfg, source)]
    if cfg["analysis"]["enabled"]:
        from console.core.analysis import SequentialChecker

        checkers.append(SequentialChecker(cfg, source, clock))
    return checkers, source


def build_engine(
    cfg: Config,
    version: str,
    *,
    journal: Journal,
    clock: Clock | None = None,
    router: TrafficRouter | None = None,
    checkers: Sequence[Checker] | None = None,
    dry_run: bool = False,
    start_index: int = 0,
    deployment_id: str | None = None,
    resumed: bool = False,
    stay_at_100: bool = False,
    operator: ev.Operator | None = None,
    listeners: Sequence[Callable[[ev.Event], object]] = (),
) -> Engine:
    from console.adapters.health import HttpHealth
    from console.core.engine import Engine, Settings

    clock = clock or RealClock()
    if checkers is None:
        checkers, _ = build_checkers(cfg, clock)
    settings = Settings.from_config(cfg, dry_run=dry_run, stay_at_100=stay_at_100)
    engine = Engine(
        settings,
        version=version,
        router=router or build_router(cfg),
        journal=journal,
        clock=clock,
        checkers=checkers,
        health=HttpHealth(),
        operator=operator,
        deployment_id=deployment_id,
        start_index=start_index,
        resumed=resumed,
        listeners=listeners,
        startup_notes=[("warning", '[metrics] source = "none": stages are judged on canary health only')]
        if cfg["metrics"]["source"] == "none" else [],
    )
    attach_lifecycle(engine, cfg)
    return engine


def attach_lifecycle(engine: Engine, cfg: Config) -> None:
    """Alerts, the Docker rollback hook and promotion, each only when configured."""

    def note(level: str, message: str, data: dict[str, Any] | None = None) -> None:
        engine.note(level, message, **(data or {}))

    from console.adapters.webhook import WebhookNotifier

    notifier = WebhookNotifier.from_config(cfg, journal_note=note)
    if notifier is not None:
        engine.add_listener(notifier.submit)
        engine.services.append(notifier)
    if cfg["docker"]["enabled"]:
        from console.adapters.docker import DockerRollbackHook

        engine.add_listener(DockerRollbackHook(cfg, cfg.journal_path.parent, note=note))

    async def on_promote(intent: ev.Intent) -> ev.Event | None:
        from console.core import promotion as promote
        from console.core.journal import read_records

        decision = promote.evaluate(cfg, list(read_records(cfg.journal_path)), promote.clean_approvals(intent.approvals),
                                    force=bool(intent.reason))
        if not decision.ok or decision.deployment is None:
            engine.note("warning", f"promote refused: {decision.message}")
            return None
        tagger = build_tagger(cfg)
        try:
            outcome = await promote.execute(cfg, decision.deployment, operator=intent.operator,
                                            approvals=promote.clean_approvals(intent.approvals), forced=decision.forced,
                                            reason=intent.reason, emit=engine.publish, router=engine.router, tagger=tagger)
        finally:
            if tagger is not None:
                tagger.close()
        if outcome.promoted is None:
            engine.note("warning", f"promote failed: {outcome.message}")
        return outcome.promoted

    engine.on_promote = on_promote
