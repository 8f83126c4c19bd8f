"""The operator console: a thin Textual App over an EngineLink.

It wires widgets, bindings and workers; what it shows comes from ``ConsoleModel`` (events
folded), what it asks goes out as ``Intent``s through the link.  It never calls the engine.

Exit codes of ``run_console``: 0 the canary reached 100% or was promoted, 3 rolled back,
130 quit while the rollout was live (the traffic stays where it is), 6/4 the engine failed.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import ModalScreen, Screen
from textual.worker import Worker, WorkerState

from console.core import state as st
from console.core.clock import Clock, RealClock
from console.core.eventfmt import action_words
from console.core.events import Intent, Operator
from console.core.exits import ExitCode, exit_code_for
from console.core.protocols import EngineLink
from console.ui import asks
from console.ui import messages as m
from console.ui.asks import Confirm, KeyHelp
from console.ui.model import ConsoleModel
from console.ui.present import decision_rows, header_info, key_help, link_note, series_rows, timeline_view
from console.ui.sources import HEARTBEAT, DockerReader, LogSourceSpec, read_file
from widgets.decision import DecisionPanel, DetailRequested
from widgets.header_bar import HeaderBar
from widgets.keybar import KeyBar
from widgets.log_pane import LogPane
from widgets.sparklines import Sparklines
from widgets.timeline import StageTimeline

TRAFFIC = ("advance", "step_back", "rollback", "pause", "resume", "promote")
# a link with role "observer" (the browser mirror, `serve`): these are not bound at all, so they are in no
# footer, palette or help, a crafted key finds nothing, and the link refuses any intent anyway
UNBOUND_FOR_OBSERVER = (*TRAFFIC, "take_over", "faults")
EVENTS_SOURCE = "events"


class CanaryApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "canary-console"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    BINDINGS = [
        # descriptions and tooltips in the guide's words: the footer, ? and the palette (ctrl+p "rollback") name them
        Binding("a", "advance", "Advance", id="advance", tooltip="Advance: skip the rest of this stage's observation (confirm)"),
        Binding("b", "step_back", "Back", id="step_back", tooltip="Step back one stage, less canary traffic (confirm)"),
        Binding("r", "rollback", "Roll back", id="rollback",
                tooltip="Roll back: all traffic to production (0% canary) now (confirm)"),
        Binding("p", "pause", "Pause", id="pause", tooltip="Pause the observation clock (traffic stays)"),
        Binding("p", "resume", "Resume", id="resume", tooltip="Resume observing (after a pause or a hold)"),
        Binding("P", "promote", "Promote", id="promote", tooltip="Promote the canary to production (confirm)"),
        Binding("slash", "filter_logs", "Filter", id="filter", tooltip="Regex filter on the log pane"),
        Binding("f", "follow", "Follow", id="follow", tooltip="Follow / pause the log pane"),
        Binding("w", "wrap", "Wrap", id="wrap", tooltip="Wrap long log lines"),
        Binding("enter", "detail", "Detail", id="detail", show=False, tooltip="Full-size chart of the selected metric"),
        Binding("T", "take_over", "Take over", id="take_over", tooltip="Become the driver of the running engine (confirm)"),
        Binding("F", "faults", "Faults", id="faults", tooltip="Inject a fault (demo sandbox)"),
        Binding("question_mark", "help", "Help", id="help", tooltip="Every key and what it does now"),
        Binding("q", "request_quit", "Quit", id="quit", tooltip="Quit (the traffic stays where it is)"),
        Binding("ctrl+c", "request_quit", "Quit", id="quit_ctrl_c", show=False, priority=True),
    ]

    def __init__(
        self,
        link: EngineLink,
        *,
        title_version: str = "",
        log_sources: Sequence[LogSourceSpec] = (),
        fault_actions: Mapping[str, Callable[[], Awaitable[None]]] | None = None,
        metrics_note: str = "",
        clock: Clock | None = None,
        log_max_lines: int = 5000,
        drain_interval: float = 0.5,
        break_glass: Callable[[str], float] | None = None,  # rolls back through the router; seconds taken
    ) -> None:
        super().__init__()
        self.link = link
        if link.role == "observer":
            for key, bindings in list(self._bindings.key_to_bindings.items()):
                kept = [b for b in bindings if b.action not in UNBOUND_FOR_OBSERVER]
                if kept:
                    self._bindings.key_to_bindings[key] = kept
                else:
                    del self._bindings.key_to_bindings[key]
        self.break_glass = break_glass
        self.title_version = title_version
        self.log_sources = list(log_sources)
        self.fault_actions = dict(fault_actions or {})
        self.metrics_note = metrics_note
        self.clock = clock or RealClock()
        self.log_max_lines = log_max_lines
        self.drain_interval = drain_interval
        self.model = ConsoleModel(self.clock.monotonic, self.clock.utcnow)
        self.exit_code = 0
        self.link_note = ""  # detached engine: "ENGINE LOST: ..." / "now watching: ..." / "engine pid N"
        self._allowed: tuple[bool | None, ...] = ()
        self._stops: list[threading.Event] = []
        self._docker: list[DockerReader] = []
        self.ended = False

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        yield StageTimeline(id="timeline")
        with Horizontal(id="middle"):
            yield DecisionPanel(id="gates")
            yield Sparklines(id="sparks")
        with Horizontal(id="logs"):
            for spec in self.log_sources:
                yield LogPane(spec.source_id, spec.title, max_lines=self.log_max_lines, drain_interval=self.drain_interval,
                              poll_interval=max(spec.poll_interval, HEARTBEAT) if spec.kind == "file" else None,
                              clock=self.clock.monotonic)
            yield LogPane(EVENTS_SOURCE, "engine events", max_lines=self.log_max_lines, drain_interval=self.drain_interval,
                          clock=self.clock.monotonic, id="events", classes="-shown")
        yield KeyBar(id="keys")

    def on_mount(self) -> None:
        self.query_one("#gates").border_title = "Gates"
        self.query_one("#sparks").border_title = "p95 & errors: canary │ prod"
        self.query_one("#gates", DecisionPanel).focus()
        self.link.on_status = lambda status: self.post_message(m.LinkStatusChanged(status))
        self._read_link()
        for spec, pane in zip(self.log_sources, self.panes(), strict=False):
            self._start_source(spec, pane)
        self.set_interval(1.0, self._tick, name="tick")
        self._refresh_from_model()

    def on_resize(self) -> None:
        wide = self.size.width >= 120
        self.query_one(KeyBar).show_command_palette = wide
        self.query_one(StageTimeline).entry_rows = 3 if wide and self.size.height >= 40 else 1

    def panes(self) -> list[LogPane]:
        return list(self.query(LogPane))

    def pane(self, source: str) -> LogPane | None:
        return next((p for p in self.panes() if p.source == source), None)

    # ------------------------------------------------------------------ workers
    @work(group="link", description="engine events", exit_on_error=False)
    async def _read_link(self) -> None:
        events = self.pane(EVENTS_SOURCE)
        history = self.link.history()
        for e in history:
            self.model.apply(e, arrived=self.model.arrival_for(e))
        if events is not None and history:
            events.pending.push(line for e in history for line in self.model.feed.feed(e))
            events.drain()  # the first frame already shows what happened
        self.post_message(m.StateChanged())
        async for e in self.link.events():
            self.model.apply(e)
            if events is not None and events.pending.push(self.model.feed.feed(e)):
                self.post_message(m.LinesPending(EVENTS_SOURCE))
            for msg in m.translate(e):
                self.post_message(msg)
        self.post_message(m.LinkEnded("the engine stopped sending events"))

    def _start_source(self, spec: LogSourceSpec, pane: LogPane) -> None:
        def wake() -> None:
            self.post_message(m.LinesPending(pane.source))

        def status(kind: str, detail: str) -> None:
            self.post_message(m.SourceStatus(pane.source, kind, detail))

        if spec.kind == "file":
            stop = threading.Event()
            self._stops.append(stop)
            self.run_worker(lambda: read_file(spec, pane.pending, wake, status,
                                              lambda: self.post_message(m.SourceHeartbeat(pane.source)), stop),
                            thread=True, group="logs", description=f"tail {spec.path}", exit_on_error=False)
        elif spec.kind == "docker":
            reader = DockerReader(spec)
            self._docker.append(reader)
            self.run_worker(lambda: reader.run(pane.pending, wake, status), thread=True, group="logs",
                            description=f"docker logs {spec.container or spec.service}", exit_on_error=False)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        w = event.worker
        if event.state == WorkerState.ERROR:
            self.notify(f"{w.description} failed: {type(w.error).__name__}: {w.error}", severity="error", timeout=10)
            if w.group == "link":
                self.post_message(m.LinkEnded(f"lost the engine: {w.error}"))

    async def on_unmount(self) -> None:
        for s in self._stops:
            s.set()
        for d in self._docker:
            d.close()
        try:
            await self.link.close()
        except Exception:  # closing is best effort on the way out
            pass

    # ------------------------------------------------------------------ messages
    @on(m.StateChanged)
    def _on_state(self) -> None:
        self._refresh_from_model()
        if _is(self.screen, "DetailScreen"):
            self.screen.update_points(self.model.points(self.screen.gate))

    @on(m.LinesPending)
    def _on_lines(self, msg: m.LinesPending) -> None:
        pane = self.pane(msg.source)
        if pane is not None:
            pane.schedule_drain()

    @on(m.SourceHeartbeat)
    def _on_heartbeat(self, msg: m.SourceHeartbeat) -> None:
        pane = self.pane(msg.source)
        if pane is not None:
            pane.heartbeat()

    @on(m.SourceStatus)
    def _on_source_status(self, msg: m.SourceStatus) -> None:
        pane = self.pane(msg.source)
        if pane is None:
            return
        pane.heartbeat()
        pane.status = {"error": "unavailable", "ended": "stream ended", "missing": "waiting for the file"}.get(msg.kind, "")
        if msg.kind != "opened" or msg.detail != pane.source.split(":", 1)[-1]:
            pane.write_note(msg.detail)

    @on(m.ActionAcknowledged)
    def _on_ack(self, msg: m.ActionAcknowledged) -> None:
        word = "accepted" if msg.accepted else "REFUSED"
        self.notify(f"{msg.who}: {action_words(msg.action)} {word}" + (f": {msg.detail}" if msg.detail else ""),
                    severity="information" if msg.accepted else "warning", timeout=6)

    @on(m.RolledBackNotice)
    def _on_rolled_back(self, msg: m.RolledBackNotice) -> None:
        kind = "AUTOMATIC ROLLBACK" if msg.automatic else "Rolled back"
        self.notify(f"{kind}: canary {msg.from_weight}% → 0%. {msg.reason}", severity="error", timeout=30)
        if msg.automatic:
            self.bell()

    @on(m.Milestone)
    def _on_milestone(self, msg: m.Milestone) -> None:
        self.notify(msg.text, severity=msg.severity, timeout=10 if msg.severity != "information" else 5)  # type: ignore[arg-type]
        if msg.bell:
            self.bell()

    @on(m.LinkStatusChanged)
    def _on_link_status(self, msg: m.LinkStatusChanged) -> None:
        was = self.link_note
        self.link_note = link_note(msg.status)
        if self.link_note == was:
            return  # a ping answered: nothing an operator needs to see redrawn
        if self.link_note.startswith(("ENGINE LOST", "now watching")):
            self.notify(self.link_note, severity="error" if self.link_note.startswith("ENGINE") else "warning", timeout=15)
            if self.link_note.startswith("ENGINE"):
                self.bell()
        self._refresh_from_model()

    @on(m.LinkEnded)
    def _on_link_ended(self, msg: m.LinkEnded) -> None:
        self.ended = True
        self._refresh_from_model()

    @on(DetailRequested)
    def _on_detail(self, msg: DetailRequested) -> None:
        self.push_screen(_screens().DetailScreen(msg.gate, self.model.points(msg.gate)))

    @on(LogPane.FilterError)
    def _on_filter_error(self, msg: LogPane.FilterError) -> None:
        self.notify(msg.text, severity="error", timeout=8)

    # ------------------------------------------------------------------ drawing
    def _refresh_from_model(self) -> None:
        s = self.model.state
        self.query_one(HeaderBar).info = header_info(self.model, self.link.role, self.title_version, self.link_note)
        self.query_one(StageTimeline).view = timeline_view(self.model)
        gates = self.query_one(DecisionPanel)
        gates.rows = decision_rows(s)
        sparks = self.query_one(Sparklines)
        sparks.rows = series_rows(self.model)
        stale = self.model.stale() and self.link.role != "replay"
        for w, title in ((gates, "Gates"), (sparks, "p95 & errors: canary │ prod")):
            w.set_class(stale, "-stale")
            age = self.model.data_age()
            text = title + (f" · STALE {age:.0f}s" if stale and age is not None else " · STALE" if stale else "")
            if w.border_title != text:  # an unchanged title must not repaint the border row
                w.border_title = text
        if not self.model.checks and s.live:
            gates.empty_text = f"waiting for the first check ({s.check_interval:g}s)" if s.check_interval else "no check yet"
        self._refresh_bindings_if_changed()

    def _refresh_bindings_if_changed(self) -> None:
        """The footer recomposes on refresh_bindings: only when what is allowed changed."""
        allowed = tuple(self.check_action(a, ()) for a in (*TRAFFIC, "take_over", "faults"))
        if allowed != self._allowed:
            self._allowed = allowed
            self.refresh_bindings()

    def _tick(self) -> None:
        """Once a second: the countdown, the progress bar and the stale badges move."""
        if self.model.state.live:
            self.query_one(HeaderBar).info = header_info(self.model, self.link.role, self.title_version, self.link_note)
            self.query_one(StageTimeline).view = timeline_view(self.model)
            stale = self.model.stale() and self.link.role != "replay"
            if stale != self.query_one(DecisionPanel).has_class("-stale") or stale:
                self._refresh_from_model()
        now = self.clock.monotonic()
        for p in self.panes():
            p.check_stale(now)

    # ------------------------------------------------------------------ bindings
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in TRAFFIC and isinstance(self.screen, ModalScreen):
            return False  # under a dialog the keys belong to the dialog
        return self.allowed(action)

    def allowed(self, action: str) -> bool:
        """Whether ``action`` applies now, whatever screen is on top (the palette asks this)."""
        s = self.model.state
        if action in UNBOUND_FOR_OBSERVER and self.link.role == "observer":
            return False  # the browser mirror: never, whatever the link or the state says
        if action in TRAFFIC:
            if action == "rollback" and self.engine_lost() and self.break_glass is not None and s.live:
                return True  # the engine is gone: roll back straight through the router
            if self.link.role != "driver" or self.engine_lost():
                return False  # watch / replay: nothing here moves traffic
            return self._traffic_allowed(action, s)
        if action == "take_over":
            return self.link.role == "watcher" and self.link.can_take_over and not self.engine_lost()
        if action == "faults":
            return bool(self.fault_actions) and self.link.role == "driver"
        if action == "request_quit" and _is(self.screen, "ConfirmScreen"):
            return False
        return True

    @staticmethod
    def _traffic_allowed(action: str, s: st.DeploymentState) -> bool:
        """What the state allows; a key that does not apply now leaves the footer (the help
        screen says why).  Rollback stays available whenever traffic may reach the canary."""
        moving = s.state in (st.OBSERVING, st.PAUSED, st.HOLDING)
        if action == "promote":
            return s.state == st.AT_100
        if action == "advance":
            return moving and s.index < len(s.stages) - 1
        if action == "step_back":
            return moving and s.index > 0
        if action == "pause":
            return s.state == st.OBSERVING
        if action == "resume":
            return s.state in (st.PAUSED, st.HOLDING)
        if action == "rollback":
            return s.live and s.state != st.ROLLING_BACK
        return False

    def _live_driver(self) -> bool:
        return self.link.role == "driver" and self.model.state.live and not self.ended

    def detached(self) -> bool:
        """The engine runs in its own process (attach): quitting detaches, the rollout goes on."""
        return self.link.detached

    def engine_lost(self) -> bool:
        """A detached engine that vanished without saying bye (kill -9, OOM, reboot)."""
        if not self.link.detached:
            return False
        st_ = self.link.status()
        return bool(st_.lost) and st_.exit_code is None and st_.lost != "detached"

    def _ask(self, ask: Confirm, action: str, reason: str = "") -> None:
        def done(answer: str | None) -> None:
            if answer == "yes":
                self._submit(action, reason)

        self.push_screen(_screens().ConfirmScreen(ask), done)

    def action_advance(self) -> None:
        self._ask(asks.advance(self.model.state, self.model.remaining()), "advance")

    def action_step_back(self) -> None:
        self._ask(asks.step_back(self.model.state), "step_back")

    def action_rollback(self) -> None:
        op = Operator.current().label()
        if self.engine_lost() and self.break_glass is not None:
            def done(answer: str | None) -> None:
                if answer == "yes":
                    self._break_glass(f"engine lost; rolled back from the console by {op}")

            self.push_screen(_screens().ConfirmScreen(asks.break_glass(self.model.state)), done)
            return
        self._ask(asks.rollback(self.model.state, op), "rollback", f"manual rollback by {op}")

    def action_pause(self) -> None:
        self._submit("pause")

    def action_resume(self) -> None:
        self._submit("resume")

    def action_promote(self) -> None:
        self._ask(asks.promote(self.model.state), "promote")

    @work(group="intents", description="send an operator intent", exit_on_error=False)
    async def _submit(self, action: str, reason: str = "") -> None:
        self.notify(f"{action_words(action)} requested: waiting for the engine…", timeout=4)
        try:
            await self.link.submit(Intent(action, operator=Operator.current(), reason=reason))
        except PermissionError as e:
            self.notify(str(e), severity="error")

    @work(thread=True, group="intents", description="break-glass rollback", exit_on_error=False)
    def _break_glass(self, reason: str) -> None:
        assert self.break_glass is not None
        try:
            took = self.break_glass(reason)
        except Exception as e:  # refused (lock, engine answers) or the router failed: one line
            self.call_from_thread(self.notify, f"break-glass rollback failed: {e}", severity="error", timeout=30)
            return
        self.call_from_thread(self.notify, "rolled back through the router: canary 0% / production 100%"
                              + (f" (verified in {took * 1000:.0f} ms)" if isinstance(took, float) else ""),
                              severity="warning", timeout=30)

    def action_take_over(self) -> None:
        def done(answer: str | None) -> None:
            if answer == "yes":
                self._take_over()

        self.push_screen(_screens().ConfirmScreen(asks.take_over(self.model.state)), done)

    @work(group="intents", description="take over", exit_on_error=False)
    async def _take_over(self) -> None:
        try:
            await self.link.take_over()
        except (PermissionError, ValueError, ConnectionError) as e:
            self.notify(f"take over refused: {e}", severity="error")
            return
        self.notify("you drive this rollout now")
        self._refresh_bindings_if_changed()

    def action_filter_logs(self) -> None:
        self.current_pane().open_filter()

    def action_follow(self) -> None:
        pane = self.current_pane()
        self.notify(f"{pane.source_title}: " + ("following" if pane.toggle_follow() else "paused"), timeout=2)

    def action_wrap(self) -> None:
        pane = self.current_pane()
        self.notify(f"{pane.source_title}: wrap " + ("on" if pane.toggle_wrap() else "off"), timeout=2)

    def current_pane(self) -> LogPane:
        """The focused pane, else the one on show."""
        focused = self.focused
        for p in self.panes():
            if focused is not None and (focused is p or p in focused.ancestors):
                return p
        return next((p for p in self.panes() if p.has_class("-shown")), self.panes()[-1])

    def action_detail(self) -> None:
        gate = self.query_one(DecisionPanel).selected_gate
        if gate:
            self.post_message(DetailRequested(gate))

    def action_help(self) -> None:
        if not self.is_screen_installed("help"):
            self.install_screen(_screens().HelpScreen(lambda: (self.key_help(), self.help_notes())), "help")
        self.push_screen("help")

    def action_faults(self) -> None:
        def chosen(name: str | None) -> None:
            if name:
                self._inject(name)

        self.push_screen(_screens().FaultMenu(list(self.fault_actions)), chosen)

    @work(group="faults", description="inject a fault", exit_on_error=False)
    async def _inject(self, name: str) -> None:
        said = await self.fault_actions[name]()
        self.notify(said if isinstance(said, str) and said else f"fault injected: {name}", severity="warning")

    def action_request_quit(self) -> None:
        if not self._live_driver() or self.engine_lost():
            self._quit()
            return
        ask = asks.quit_live(self.model.state, self.detached())

        def done(answer: str | None) -> None:
            if answer == "yes":
                self._quit(0 if self.detached() else None)
            elif answer == "alt":
                self._stop_engine()

        self.push_screen(_screens().ConfirmScreen(ask), done)

    @work(group="intents", description="stop the engine", exit_on_error=False)
    async def _stop_engine(self) -> None:
        try:
            await self.link.stop()
        except (PermissionError, ValueError, ConnectionError) as e:
            self.notify(f"could not stop the engine: {e}", severity="error")
            return
        self._quit(ExitCode.INTERRUPTED)

    def _quit(self, code: int | None = None) -> None:
        if code is None:
            code = self.link.status().exit_code if self.link.detached else None
            if code is None:  # a watcher's or a replay's console ends with 0; a driver's as the deployment did
                code = 0 if self.link.role != "driver" else int(exit_code_for(self.model.state))
        self.exit_code = code
        self.exit(code, return_code=code)

    # focus: tab walks the panels; in a narrow terminal it also brings the next log pane on show
    def action_focus_next(self) -> None:
        self._cycle(1)

    def action_focus_previous(self) -> None:
        self._cycle(-1)

    def _cycle(self, step: int) -> None:
        if self.screen is not self.screen_stack[0]:
            (super().action_focus_next if step > 0 else super().action_focus_previous)()
            return
        order: list[Any] = [self.query_one(DecisionPanel), self.query_one(Sparklines), *[p.view for p in self.panes()]]
        focused = self.focused
        cur = next((i for i, w in enumerate(order) if focused is w or (focused is not None and w in focused.ancestors)), -1)
        target = order[(cur + step) % len(order)]
        if any(p.view is target for p in self.panes()):
            for p in self.panes():
                p.set_class(p.view is target, "-shown")
            self.query_one("#logs").refresh(layout=True)  # a display change: lay the panes out now
        self.screen.set_focus(target)  # at once (Widget.focus waits a turn): keys typed fast all count

    # ------------------------------------------------------------------ help / palette
    def key_help(self) -> list[KeyHelp]:
        """Every key; judged on the console beneath the help (``allowed``, not ``check_action``)."""
        skip = {a for a, present in (("take_over", self.link.can_take_over), ("faults", bool(self.fault_actions)))
                if not present}
        if self.link.role == "observer":
            skip.update(UNBOUND_FOR_OBSERVER)  # not bound: not listed as "off" either
        return key_help(self.BINDINGS, self.allowed, self.link.role, TRAFFIC, skip)

    def help_notes(self) -> list[str]:
        notes = ["Quitting never moves traffic: resume with `canary-console deploy --version V --resume`."]
        if self.metrics_note:
            notes.append(f"Metrics: {self.metrics_note}")
        return notes

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for b in self.BINDINGS:
            assert isinstance(b, Binding)
            if b.action in ("request_quit",) or not self.allowed(b.action):
                continue  # the palette is a dialog itself: ask what applies beneath it
            yield SystemCommand(f"{b.description} ({self.get_key_display(b)})", b.tooltip or b.description,
                                lambda a=b.action: self.run_action(a))


def _screens() -> Any:
    """The dialogs module, imported on the first dialog: a faster first frame."""
    from console.ui import screens

    return screens


def _is(screen: Any, name: str) -> bool:
    """``isinstance`` against a screen class without importing the dialogs at start."""
    return any(cls.__name__ == name for cls in type(screen).__mro__)

