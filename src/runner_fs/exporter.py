"""`runner-fs serve-metrics`: one host's Prometheus metrics, in Prometheus' text format.

A scrape reads the filesystems' records and the mount table (it never mounts, unmounts or
changes anything), the last pass's record, the quarantine directory, and the harvest tallies
from storage: one indexed read, whatever the number of datapoints stored.
"""

from __future__ import annotations

import collections
import datetime
import logging
import os
import socketserver
import sys
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from runner_fs import __version__, host, tallies
from runner_fs.config import HostConfig
from runner_fs.errors import StorageError
from runner_fs.reconcile import last_reconcile, list_filesystems
from runner_fs.storage import BaseStorage

logger = logging.getLogger(__name__)

VERSION_ENV = "RUNNER_FS_VERSION"  # the charm's build, set by the runner-fs-metrics service
STATES = ("running", "finished", "released", "expired", "broken")
COUNTERS = {
    tallies.HARVESTED: "Runners harvested: their metrics stored and their filesystem removed.",
    tallies.QUARANTINED: "Runners quarantined by harvest passes (corrupt, hostile or broken).",
    tallies.DATAPOINTS: "Datapoints pushed into storage by harvests.",
}
HISTOGRAMS = {
    "runner_fs_installation_duration_seconds": "Runner installation time (start to installed).",
    "runner_fs_idle_duration_seconds": "Runner idle time (installed to job start).",
    "runner_fs_job_duration_seconds": "Job time (job start to job end).",
}


class HostCollector:
    """Collects one host's metrics at each scrape."""

    def __init__(self, config: HostConfig, interval: float) -> None:
        """Read the host described by `config`, harvested every `interval` minutes.

        Storage is opened at the first scrape.
        """
        self.config = config
        self.interval = interval
        self._storage: BaseStorage | None = None
        self._lock = threading.Lock()  # scrapes are served at once; one collects at a time

    def describe(self) -> list[Metric]:
        """Describe nothing up front, so registering does not scrape."""
        return []

    def _tallies(self) -> dict[str, int] | None:
        """Return this unit's harvest tallies, or None while storage does not answer."""
        try:
            if self._storage is None:
                self._storage = self.config.storage()
            return self._storage.tallies(self.config.unit)
        except StorageError as exc:
            logger.warning("storage unreachable: %s", exc)
            if self._storage is not None:
                self._storage.close()
                self._storage = None
            return None

    def collect(self) -> Iterator[Metric]:
        """Yield every metric of the host (one scrape at a time: they share one storage)."""
        with self._lock:
            yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        yield from self._filesystems()
        yield from self._passes()
        counts = self._tallies()
        yield GaugeMetricFamily(
            "runner_fs_storage_up", "1 if the metrics storage answered this scrape, else 0.",
            value=0 if counts is None else 1,
        )  # fmt: skip
        if counts is not None:
            yield from _harvests(counts)

    def _filesystems(self) -> Iterator[Metric]:
        manager = self.config.manager()
        rows = list_filesystems(manager, self.config.max_age, mount=False)
        by_state = collections.Counter(row["state"] for row in rows)
        family = GaugeMetricFamily(
            "runner_fs_filesystems", "Runner filesystems by state.", labels=["state"]
        )
        for state in STATES:
            family.add_metric([state], by_state[state])
        yield family
        archives = [path.stat().st_size for path in manager.quarantine_dir.glob("*.tar.gz")]
        yield GaugeMetricFamily(
            "runner_fs_quarantine_archives", "Quarantine archives kept.", value=len(archives)
        )
        yield GaugeMetricFamily(
            "runner_fs_quarantine_bytes", "Bytes of quarantine archives kept.", value=sum(archives)
        )
        base = self.config.base_dir  # before the first filesystem: the disk it will be on
        stats = os.statvfs(next(path for path in (base, *base.parents) if path.exists()))
        yield GaugeMetricFamily(
            "runner_fs_free_bytes", "Bytes free where images live, for unprivileged users.",
            value=stats.f_bavail * stats.f_frsize,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "runner_fs_capacity_bytes", "Size of the filesystem where images live.",
            value=stats.f_blocks * stats.f_frsize,
        )  # fmt: skip
        images = str(manager.images_dir) + "/"
        in_use = sum(1 for path in host.loop_backing_files() if path.startswith(images))
        yield GaugeMetricFamily(
            "runner_fs_loop_devices_in_use", "Loop devices holding runner images.", value=in_use
        )

    def _passes(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "runner_fs_build_info", "The build of runner-fs this exporter runs (always 1).",
            labels=["version"],
        )  # fmt: skip
        info.add_metric([os.environ.get(VERSION_ENV) or __version__], 1)
        yield info
        yield GaugeMetricFamily(
            "runner_fs_reconcile_interval_seconds", "Time between two harvest passes.",
            value=self.interval * 60,
        )  # fmt: skip
        record = last_reconcile(self.config.base_dir) or {}
        if record.get("last_success"):
            success = datetime.datetime.fromisoformat(record["last_success"]).timestamp()
            yield GaugeMetricFamily(
                "runner_fs_reconcile_last_success_timestamp_seconds",
                "When a harvest pass last ended without an error (Unix time).",
                value=success,
            )
        if record.get("duration_seconds") is not None:
            yield GaugeMetricFamily(
                "runner_fs_reconcile_duration_seconds", "How long the last harvest pass took.",
                value=record["duration_seconds"],
            )  # fmt: skip
        yield CounterMetricFamily(
            "runner_fs_reconcile_errors", "Problems met by harvest passes (see the log).",
            value=int(record.get("errors_total") or 0),
        )  # fmt: skip


def _harvests(counts: dict[str, int]) -> Iterator[Metric]:
    """Turn the tallies back into counters and histograms."""
    for name, doc in COUNTERS.items():
        value = counts.get(tallies.series(name), 0)
        yield CounterMetricFamily(name.removesuffix("_total"), doc, value=value)
    samples: dict[str, dict[tuple[tuple[str, str], ...], dict[str, int]]] = {
        name: collections.defaultdict(dict) for name in HISTOGRAMS
    }
    for key, value in counts.items():
        sample, labels = tallies.parse(key)
        for name, series in samples.items():
            if sample.startswith(f"{name}_"):
                part = sample.removeprefix(f"{name}_")
                le = labels.pop("le", "")
                series[tuple(sorted(labels.items()))][f"{part}{le}"] = value
    label_names = {name: list(keys) for name, keys in tallies.HISTOGRAMS.values()}
    for name, series in samples.items():
        family = HistogramMetricFamily(name, HISTOGRAMS[name], labels=label_names[name])
        for label_pairs, parts in sorted(series.items()):
            buckets: list[tuple[str, float]] = []
            below = 0
            for bound in tallies.BUCKETS:  # cumulate the per-bucket counts, as Prometheus has it
                below += parts.get(f"bucket{bound}", 0)
                buckets.append((floatToGoString(bound), below))
            buckets.append(("+Inf", parts.get("count", 0)))
            values = dict(label_pairs)
            family.add_metric(
                [values.get(key, "") for key in label_names[name]],
                buckets,
                sum_value=parts.get("sum_us", 0) / tallies.MICRO,
            )
        yield family


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per connection: an idle or slow client never holds up another scrape."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Log nothing per request (Prometheus scrapes every few seconds)."""


def serve(config: HostConfig, address: str, port: int, interval: float) -> None:
    """Serve the host's metrics at http://ADDRESS:PORT/metrics until killed.

    `interval`, minutes between harvest passes, is exported for the stale-harvest alert.

    Raises:
        OSError: the address cannot be bound.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostCollector(config, interval))
    app = make_wsgi_app(registry)
    with make_server(
        address, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
    ) as server:
        bound = server.server_port  # the one the kernel picked, for port 0
        print(f"serving metrics on http://{address}:{bound}/metrics", file=sys.stderr, flush=True)
        server.serve_forever()
