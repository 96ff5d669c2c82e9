"""Prometheus metrics of one guard process, in a registry of its own (so tests can build many apps).

Names carry their unit; labels are bounded sets (route, decision, status), never prompt text.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily

from headguard import __version__

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Scores are robust z-scores of the most collapsed head: clean traffic sits around 0-4, triggers far above.
SCORE_BUCKETS = (-2, -1, 0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("headguard_requests", "Guarded requests by route and decision.",
                                ["route", "decision"], registry=r)
        self.inputs = Counter("headguard_inputs", "Scored inputs by decision (a scan request may hold many).",
                              ["decision"], registry=r)
        self.scores = Histogram("headguard_score", "Anomaly score of each scored input.",
                                buckets=SCORE_BUCKETS, registry=r)
        self.threshold = Gauge("headguard_threshold", "Active decision thresholds.", ["decision"], registry=r)
        self.request_seconds = Histogram("headguard_request_duration_seconds", "Whole request duration.",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.scoring_seconds = Histogram("headguard_scoring_duration_seconds",
                                         "Duration of one scoring forward pass (a micro-batch).",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_seconds = Histogram("headguard_upstream_duration_seconds",
                                          "Time to the upstream's response headers.", ["target"],
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_errors = Counter("headguard_upstream_errors", "Upstream calls that failed.", ["target"],
                                       registry=r)
        self.batch_size = Histogram("headguard_batch_size", "Inputs per scoring forward pass.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("headguard_queue_depth", "Inputs waiting to be scored.", registry=r)
        self.fail_open = Counter("headguard_fail_open", "Requests let through unscored because scoring failed.",
                                 registry=r)
        self.scoring_errors = Counter("headguard_scoring_errors", "Scoring passes that raised.", registry=r)
        self.swaps = Counter("headguard_weights_swaps", "Weights version changes by result (applied, refused).",
                             ["result"], registry=r)
        self.weights = Info("headguard_weights", "The active weights version.", registry=r)
        self.ready = Gauge("headguard_ready", "1 once model, calibration and weights are loaded.", registry=r)
        self.build = Info("headguard_build", "headguard build.", registry=r)
        self.build.info({"version": __version__})
        # Known label values start at 0, so that rate() and increase() see their first event.
        for decision in ("allow", "route", "reject"):
            self.inputs.labels(decision)
        for result in ("applied", "refused"):
            self.swaps.labels(result)

    def watch_jobs(self, list_jobs: Callable[[], list[dict]]) -> None:
        """Job counts by status and the running jobs' progress, read from the queue at scrape time."""
        self.registry.register(_JobsCollector(list_jobs))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def worker_registry(list_jobs: Callable[[], list[dict]], busy: Callable[[], bool]) -> CollectorRegistry:
    """What `headguard worker` exports: the queue's jobs (as the guard sees them) and whether it is busy."""
    registry = CollectorRegistry()
    Info("headguard_build", "headguard build.", registry=registry).info({"version": __version__})
    Gauge("headguard_worker_busy", "1 while this worker runs a repair job.",
          registry=registry).set_function(lambda: float(busy()))
    registry.register(_JobsCollector(list_jobs))
    return registry


class _JobsCollector:
    STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")

    def __init__(self, list_jobs: Callable[[], list[dict]]):
        self.list_jobs = list_jobs

    def collect(self):
        try:
            jobs = self.list_jobs()
        except Exception:  # the queue is down: say nothing rather than fail the whole scrape
            return
        by_status = GaugeMetricFamily("headguard_jobs", "Recent repair jobs by status.", labels=["status"])
        for status in self.STATUSES:
            by_status.add_metric([status], sum(j["status"] == status for j in jobs))
        yield by_status
        progress = GaugeMetricFamily("headguard_job_progress_ratio", "Progress of running repair jobs (0-1).",
                                     labels=["job_id"])
        for job in jobs:
            if job["status"] == "running" and job.get("progress"):
                progress.add_metric([job["id"]], job["progress"]["fraction"])
        yield progress
