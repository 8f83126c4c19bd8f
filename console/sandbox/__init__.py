"""The demo sandbox: real nginx, Prometheus, two demo services and traffic, supervised.

``canary-console demo`` (console/commands/demo.py) starts, as supervised child processes, the
production demo service (v0.1.0) and the canary (v0.2.0) on free loopback ports, nginx in its
own prefix directory in front of them, Prometheus scraping both every second (or, without
Prometheus, the console's own scrape source), and a traffic generator through nginx.  It
writes a canary.toml for all of this in the sandbox directory, loads it like any other
config, and rolls v0.2.0 out, under the console or (``--headless``) one line per event.
Every child stops on every exit path and the directory goes (unless ``--keep``).

* plan.py: the demo's versions and stages; the flags validated into a ``Plan``;
* stack.py: starting the services, nginx, Prometheus and the traffic; the probes to the canary;
* config_writer.py: the sandbox's canary.toml, with the demo's window and min_requests;
* faults.py: faults into the canary (scheduled, or the console's F menu);
* drive.py: the session: start, build the engine, run it headless or under the console, stop;
* supervisor.py: the process supervisor (``Sandbox``); procs.py its process-group helpers;
* service.py: the demo service; traffic.py: the traffic generator; nginx_local.py: nginx.

Why the demo's timings look the way they do: at 20 requests/s a 1% stage sends the canary a
request every 5 s, so within a 30 s observation a mode can see no canary request at all, and
"no data" never passes a gate.  The demo therefore (1) sends a few probe requests per mode
straight to the canary from stage 1 on (``stack.Probes``: ``PROBES_PER_MODE`` per mode per
observation period, as a QA probe would), (2) judges a rate window of twice the observation
period, so the previous stage stays in view, and (3) sizes ``min_requests`` from the expected
canary traffic.  It warms the canary up the way a real deploy does, with ``[rollout]
warmup_requests`` (``WARMUP_PER_MODE`` per mode, one body per mode in turn: the guide's "Warm
up canary"); the gates and the analysis leave the warm-up out of their samples, so it cannot
be what gives the 1% stage its data.  A fault still shows within seconds: the critical gates
(5xx ratio above 1%, any schema failure, health) need one bad check, not a full window.
"""
