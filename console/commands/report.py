"""``canary-console report DEPLOYMENT_ID [--format md|html] [--output PATH]``: the incident report.

Reads the journal (never the lock, never nginx), builds the report in ``console.core.report``
and writes it: HTML as one self-contained file (charts as data: URIs), Markdown with its charts
as PNG files in ``<name>_files/`` beside it.  Default path: ``<journal dir>/reports/<id>.<ext>``,
where every rollback already wrote its HTML report.  Bad input (an unknown id, a journal that
cannot be read, an output that cannot be written) is one line and exit 2, with nothing written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from console.commands.term import err
from console.core import report
from console.core.exits import ExitCode

if TYPE_CHECKING:
    from console.core.config import Config


def run(args: argparse.Namespace, cfg: Config) -> int:
    fmt = args.format or "html"
    try:
        records = report.read_journal(cfg.journal_path)
    except report.ReportError as e:
        err(f"report: {e}")
        return ExitCode.USAGE
    dep = report.resolve(records, args.deployment_id)
    if dep is None:
        known = report.deployment_ids(records)
        latest = ", ".join(known[-3:]) or "none"
        err(f"report: no single deployment matches {args.deployment_id!r} in {cfg.journal_path}; "
            f"allowed: an id from `canary-console history`, or latest (latest: {latest})")
        return ExitCode.USAGE
    output = Path(args.output) if args.output else report.report_path(cfg.journal_path, dep, fmt)
    try:
        if not args.output:
            output.parent.mkdir(parents=True, exist_ok=True)
        written = report.write(report.build(records, dep, journal_path=cfg.journal_path, config_path=cfg.path), fmt, output)
    except report.ReportError as e:
        err(f"report: {e}")
        return ExitCode.USAGE
    except OSError as e:
        err(f"report: cannot write the report to {output}: {e.strerror or type(e).__name__}")
        return ExitCode.USAGE
    charts = len(written) - 1
    print(f"incident report of {dep}: {written[0]}" + (f" (and {charts} charts in {report.files_dir(output)})" if charts else ""))
    return ExitCode.OK
