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

if TYPE_CHECKING:  # annotations only: `rollback` imports this module and need not build the Protocols
    from console.core.custom_gates import CustomGates
    from console.core.engine import Engine
    from console.core.protocols import Checker, ImageTagger, MetricSource, TrafficRouter, Warmer


def build_router(cfg: Config) -> TrafficRouter:
    """One nginx (``[nginx]``), or a fleet moved as one when ``[[nginx.hosts]]`` are configured."""
    if cfg.nginx_hosts:
        from console.adapters.nginx.fleet import FleetRouter

        return FleetRouter.from_config(cfg)
    from console.adapters.nginx.router import NginxRouter

    return NginxRouter.from_config(cfg)


def build_quick_router(cfg: Config) -> TrafficRouter | None:
    """The router of the CLI's `rollback` and `weights` when one can go without an event loop: one
    nginx in reload mode (``QuickRouter``, driven by ``manual.run_inline``); None for a fleet or
    dynamic mode (they take ``build_router`` and asyncio)."""
    if cfg.nginx_hosts or cfg["nginx"]["mode"] != "reload":
        return None
    from console.adapters.nginx.quick import QuickRouter

    return QuickRouter.from_config(cfg)


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


def build_checkers(cfg: Config, clock: Clock, dry_run: bool = False) -> tuple[list[Checker], MetricSource | None]:
    """The guide's gates (unless ``[gates] builtin = false``), the ``[[gates.custom]]`` gates and
    the sequential analysis (unless ``[analysis] enabled = false``), all on one metric source."""
    source = build_source(cfg, clock)
    split = build_split(cfg, dry_run)
    if source is None:
        return split, None
    checkers: list[Checker] = []
    if cfg["gates"]["builtin"]:
        from console.core.gates import MetricGates

        checkers.append(MetricGates(cfg, source))  # closes the source at the end
    if cfg.custom_gates:
        checkers.append(build_custom_gates(cfg, source, owns_source=not cfg["gates"]["builtin"]))
    if cfg["analysis"]["enabled"]:
        from console.core.analysis import SequentialChecker

        checkers.append(SequentialChecker(cfg, source, clock))
    return checkers + split, source


def build_split(cfg: Config, dry_run: bool = False) -> list[Checker]:
    """The ``split`` gate on ``[nginx] access_log`` (docs/gates.md "The split, measured"): on with
    ``[gates] split`` (the default), off without an access log, and in a dry run (nginx never moves)."""
    if not cfg["gates"]["split"] or not cfg["nginx"]["access_log"] or dry_run:
        return []
    from console.adapters.split_source import SplitChecker

    return [SplitChecker.from_config(cfg)]


def build_custom_gates(cfg: Config, source: MetricSource, owns_source: bool = False) -> CustomGates:
    """The ``[[gates.custom]]`` checker on ``source`` (a PrometheusSource: config validation refuses
    custom gates with any other source)."""
    from console.adapters.metrics.custom import PrometheusQueries
    from console.adapters.metrics.prometheus import PrometheusSource
    from console.core.config import format_duration, window_label
    from console.core.custom_gates import CustomGates

    if not isinstance(source, PrometheusSource):
        raise TypeError(f"custom gates need a PrometheusSource, not {type(source).__name__}")
    m = cfg["metrics"]
    return CustomGates(cfg.custom_gates, PrometheusQueries(source, owns_source=owns_source),
                       canary_value=m["canary_value"], production_value=m["production_value"],
                       window=window_label(cfg), promql_window=format_duration(cfg.rate_window_s),
                       window_s=cfg.rate_window_s, clock=source.clock)


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
    source: MetricSource | None = None,
) -> Engine:
    """``source``: the metric source of the ``checkers`` passed in (the warm-up waits for it to
    count the warm-up); with ``checkers`` None, the one built here."""
    from console.adapters.health import HttpHealth
    from console.core.engine import Engine, Settings

    clock = clock or RealClock()
    if checkers is None:
        checkers, source = build_checkers(cfg, clock, dry_run=dry_run)
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
        warmer=build_warmer(cfg, source),
        startup_notes=[("warning", '[metrics] source = "none": stages are judged on canary health only')]
        if cfg["metrics"]["source"] == "none" else [],
    )
    attach_lifecycle(engine, cfg)
    return engine


def build_warmer(cfg: Config, source: MetricSource | None = None) -> Warmer | None:
    """``[rollout] warmup_requests`` straight to the canary before stage 1, when set."""
    if cfg["rollout"]["warmup_requests"] <= 0:
        return None
    from console.adapters.warmup import HttpWarmer

    return HttpWarmer.from_config(cfg, source)


def attach_lifecycle(engine: Engine, cfg: Config) -> None:
    """Alerts, the incident report of a rollback, the Docker rollback hook, the exporter and
    promotion, each only when configured (the report always)."""

    def note(level: str, message: str, data: dict[str, Any] | None = None) -> None:
        engine.note(level, message, **(data or {}))

    from console.adapters.webhook import WebhookNotifier

    notifier = WebhookNotifier.from_config(cfg, journal_note=note)
    if notifier is not None:
        engine.add_listener(notifier.submit)
        engine.services.append(notifier)
    from console.core.report import IncidentReporter

    engine.add_listener(IncidentReporter(cfg.journal_path, cfg.path, note=note))  # every rollback: reports/<id>.html
    if cfg["docker"]["enabled"]:
        from console.adapters.docker import DockerRollbackHook

        engine.add_listener(DockerRollbackHook(cfg, cfg.journal_path.parent, note=note))
    if cfg["exporter"]["listen"]:  # prometheus_client is imported only then
        from console.adapters.exporter import Exporter

        exporter = Exporter.from_config(cfg, note=note)
        if exporter is not None:
            engine.checkers = [exporter.timed(c) for c in engine.checkers]  # check durations
            engine.add_listener(exporter)
            engine.services.append(exporter)  # after the notifier: alerts go out before it lingers

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
