"""The notifications' figures for /metrics (names in appliance/health/METRICS.md).

Read from the outbox at scrape time (a collector, as `health.metrics` does): the totals are
kept in the index (``notify_counts``), so they survive a restart and never go down.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .outbox import Outbox

log = logging.getLogger("rdr.notify")


class NotifyCollector(Collector):
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def collect(self) -> Iterator[Metric]:  # in a worker thread (the /metrics handler)
        try:
            c = self.outbox.counts()
        except (sqlite3.Error, OSError) as exc:  # the data disk is gone: health says it
            log.debug("notification figures unreadable: %s", exc)
            return
        yield CounterMetricFamily("rdr_notifications_sent", "Notifications delivered "
                                  "(one per message and target)", value=c["sent_total"])
        yield CounterMetricFamily("rdr_notifications_failed", "Delivery attempts that "
                                  "failed (each is retried with back-off)",
                                  value=c["failed_attempts_total"])
        yield CounterMetricFamily("rdr_notifications_undeliverable", "Notifications given "
                                  "up on (refused for good, or past notify.give_up_hours)",
                                  value=c["undeliverable_total"])
        yield GaugeMetricFamily("rdr_notifications_queued", "Notifications waiting to be "
                                "delivered", value=c["waiting"])
        oldest = c["oldest_waiting_at"]
        yield GaugeMetricFamily("rdr_notifications_oldest_queued_seconds", "Age of the "
                                "oldest notification waiting to be delivered (0: none)",
                                value=0.0 if oldest is None else max(0.0, time.time() - oldest))
