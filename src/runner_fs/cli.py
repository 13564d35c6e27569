"""The `runner-fs` command line: the core, for runner provisioners and operators on the host.

Exit codes: 0 ok, 1 the operation failed (stderr says why), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import datetime
import decimal
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner_fs import archive, demo, eventlog, exporter, health
from runner_fs.config import DEFAULT_BASE_DIR, ConfigError, HostConfig, load_config
from runner_fs.errors import RunnerFsError
from runner_fs.reconcile import Progress, at_tenth, list_filesystems
from runner_fs.report import ISO_EXAMPLE, parse_instant, parse_list, report

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
logger = logging.getLogger("runner_fs")


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label {text!r:.40} is not KEY=VALUE")
    return key, value


def _instant(text: str) -> datetime.datetime:
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def progress_printer(label: str, stream: Any = None) -> Progress:
    """Return a progress callback: a bar on a terminal, a line per tenth otherwise."""
    stream = stream or sys.stderr
    if stream.isatty():

        def show(done: int, total: int) -> None:
            filled = 30 * done // max(total, 1)
            stream.write(f"\r{label} [{'#' * filled:<30}] {done}/{total}")
            if done == total:
                stream.write("\n")
            stream.flush()

    else:

        def show(done: int, total: int) -> None:
            if at_tenth(done, total):
                print(f"{label}: {done}/{total}", file=stream, flush=True)

    return show


# -- commands: each returns what `--json` prints, and the text to print otherwise ----------


def _cmd_create(args: argparse.Namespace) -> tuple[Any, str]:
    storage = args.config.manager().create(args.name, **dict(args.label))
    return {"runner": storage.runner_name, "path": str(storage.path)}, str(storage.path)


def _cmd_get(args: argparse.Namespace) -> tuple[Any, str]:
    storage = args.config.manager().get(args.name)
    return {"runner": storage.runner_name, "path": str(storage.path)}, str(storage.path)


def _cmd_list(args: argparse.Namespace) -> tuple[Any, str]:
    config: HostConfig = args.config
    rows = list_filesystems(config.manager(), config.max_age)
    lines = [f"{'RUNNER':<32} {'STATE':<9} {'MOUNTED':<7} {'USED':>9} CREATED"]
    lines += [
        f"{r['runner']:<32} {r['state']:<9} {'yes' if r['mounted'] else 'no':<7} "
        f"{r['used'] if r['used'] is not None else '-':>9} {r['created'] or '-'}"
        for r in rows
    ]
    return rows, "\n".join(lines) if rows else "no filesystems"


def _cmd_release(args: argparse.Namespace) -> tuple[Any, str]:
    released = args.config.manager().release(args.name)
    text = f"released {args.name}" if released else f"{args.name} has no filesystem (harvested?)"
    return {"runner": args.name, "released": released}, text


def _cmd_delete(args: argparse.Namespace) -> tuple[Any, str]:
    args.config.manager().delete(args.name)
    return {"runner": args.name}, f"deleted {args.name}"


def _cmd_quarantine(args: argparse.Namespace) -> tuple[Any, str]:
    path = args.config.manager().move_to_quarantine(args.name)
    digest = archive.sha256_of(path)
    return {"runner": args.name, "archive": str(path), "sha256": digest}, f"{path}  {digest}"


def _cmd_reconcile(args: argparse.Namespace) -> tuple[Any, str]:
    config: HostConfig = args.config
    counts = config.reconcile(progress_printer("reconcile"), args.lock_timeout).as_dict()
    text = ", ".join(f"{key} {value}" for key, value in counts.items())
    if counts["errors"]:
        raise _PartialFailureError(counts, f"{text}: see the errors above")
    return counts, text


def _cmd_report(args: argparse.Namespace) -> tuple[Any, str]:
    result = report(args.config.storage(), args.groupby, args.begin, args.end, args.metric_types)
    rows = result["results"]
    keys = [key for key in (rows[0] if rows else {}) if key not in ("begin", "end")]
    lines = ["  ".join(f"{key.upper():>14}" for key in keys)]
    lines += ["  ".join(f"{_cell(row[key]):>14}" for key in keys) for row in rows]
    return result, "\n".join(lines) if rows else "no datapoints in that window"


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _cmd_demo(args: argparse.Namespace) -> tuple[Any, str]:
    summary = demo.run_demo(args.runners, progress_printer("reconcile"))
    counts = summary["reconcile"]
    lines = [
        f"simulated {len(summary['runners'])} runners on real loop devices: "
        + ", ".join(
            f"{sum(1 for r in summary['runners'].values() if r == role)} {role}"
            for role in ("finished", "released", "running", "hostile")
        ),
        "reconcile: " + ", ".join(f"{key} {value}" for key, value in counts.items()),
        "",
        "job time by repository and flavor:",
        f"  {'REPOSITORY':<18} {'FLAVOR':<7} {'SECONDS':>9} {'PRICE':>9}",
    ]
    lines += [
        f"  {row['repository']:<18} {row['flavor']:<7} {row['qty']:>9.1f} {row['rate']:>9.5f}"
        for row in summary["job_time"]
    ]
    lines += [
        "",
        f"quarantined: {', '.join(summary['quarantined']) or 'nothing'}",
        f"left running (not harvested): {', '.join(summary['still_running']) or 'none'}",
        "cleaned up: no mounts, loop devices or files left behind",
    ]
    return summary, "\n".join(lines)


NAGIOS_LABELS = ("OK", "WARNING", "CRITICAL")
METRICS_PORT = 10242  # outside 9100-9999, which Prometheus' port allocations fill


def _cmd_serve_metrics(args: argparse.Namespace) -> tuple[Any, str]:
    exporter.serve(args.config, args.address, args.port, args.interval)  # only killed
    return {}, ""


def _cmd_check(args: argparse.Namespace) -> tuple[Any, str]:
    base_dir = args.base_dir
    if args.what == "harvest":
        finding = health.freshness(base_dir, datetime.timedelta(minutes=args.interval))
    elif args.what == "errors":
        finding = health.last_pass(base_dir)
    else:
        finding = health.free_space(base_dir, args.warning, args.critical)
    label = NAGIOS_LABELS[finding.code]
    text = f"RUNNER-FS {args.what.upper()} {label} - {finding.message}"
    return {"check": args.what, "code": finding.code, "message": finding.message}, text


class _PartialFailureError(RunnerFsError):
    """The command did its work but with errors: print the result, exit 1."""

    def __init__(self, result: Any, text: str) -> None:
        super().__init__(text)
        self.result = result


# -- parser and entry point -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every command."""
    parser = argparse.ArgumentParser(
        prog="runner-fs",
        description="Per-runner loopback filesystems and their metrics.",
        epilog="Exit codes: 0 ok, 1 the operation failed, 2 bad usage or configuration.",
    )
    parser.add_argument("--config", type=Path, help="host config file (default: "
                        "$RUNNER_FS_CONFIG, else /etc/runner-fs/config.yaml)")  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="log every action")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=text, description=text)
        sub.set_defaults(handler=handler)
        return sub

    sub = command("create", _cmd_create, "create and mount a runner's filesystem")
    sub.add_argument("name")
    sub.add_argument("--label", type=_label, action="append", default=[], metavar="KEY=VALUE")
    command("get", _cmd_get, "mount a runner's filesystem again if needed").add_argument("name")
    command("list", _cmd_list, "list every filesystem and its state")
    command("release", _cmd_release, "mark a runner gone").add_argument("name")
    command("delete", _cmd_delete, "remove a runner's filesystem").add_argument("name")
    command("quarantine", _cmd_quarantine, "archive and remove a filesystem").add_argument("name")
    sub = command("reconcile", _cmd_reconcile, "harvest finished runners into storage, once")
    sub.add_argument("--lock-timeout", type=float, default=60.0, metavar="SECONDS",
                     help="how long to wait for a pass already running")  # fmt: skip
    sub = command("report", _cmd_report, "storage totals over a window")
    sub.add_argument("--groupby", type=parse_list, help="attributes, e.g. repository,flavor")
    sub.add_argument("--begin", type=_instant, help=f"ISO 8601, e.g. {ISO_EXAMPLE}")
    sub.add_argument("--end", type=_instant, help="ISO 8601 (exclusive)")
    sub.add_argument("--metric-types", type=parse_list, help="e.g. runner.job,runner.idle")
    sub = command("check", _cmd_check, "a Nagios check: exit 0 OK, 1 WARNING, 2 CRITICAL")
    sub.add_argument("what", choices=["harvest", "errors", "free-space"])
    sub.add_argument(
        "--base-dir",
        type=Path,
        default=DEFAULT_BASE_DIR,
        help="where filesystems live (default: %(default)s); no config file is "
        "read, so the check runs as an unprivileged user",
    )
    sub.add_argument(
        "--interval",
        type=float,
        default=5,
        metavar="MINUTES",
        help="harvest: minutes between passes (stalled after 3)",
    )
    sub.add_argument(
        "--warning",
        type=float,
        default=20,
        metavar="PERCENT",
        help="free-space: warn below this share free",
    )
    sub.add_argument("--critical", type=float, default=10, metavar="PERCENT",
                     help="free-space: critical below this share free")  # fmt: skip
    sub = command("serve-metrics", _cmd_serve_metrics, "serve Prometheus metrics until killed")
    sub.add_argument("--address", default="127.0.0.1", help="address to listen on (%(default)s)")
    sub.add_argument("--port", type=int, default=METRICS_PORT, help="port (%(default)s)")
    sub.add_argument("--interval", type=float, default=5, metavar="MINUTES",
                     help="minutes between passes (for the stale-harvest alert)")  # fmt: skip
    sub = command("demo", _cmd_demo, "the whole flow with simulated runners; cleans up")
    sub.add_argument("--runners", type=int, default=12, help="simulated runners (2-500)")
    return parser


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime.datetime, Path)):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(f"cannot print {type(value).__name__} as JSON")


def _emit(args: argparse.Namespace, result: Any, text: str) -> None:
    print(json.dumps(result, default=_json_default) if args.json else text)


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code."""
    args = build_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="runner-fs: %(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)  # the event log may lower the core's level
    try:
        if args.command not in ("demo", "check"):
            args.config = load_config(args.config)
            eventlog.attach(args.config.event_log)
        result, text = args.handler(args)
    except _PartialFailureError as exc:
        _emit(args, exc.result, str(exc))
        return EXIT_FAILED
    except (ConfigError, ValueError) as exc:
        print(f"runner-fs {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RunnerFsError, OSError) as exc:
        print(f"runner-fs {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _emit(args, result, text)
    return result["code"] if args.command == "check" else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
