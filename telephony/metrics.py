"""What telephony adds to ``/metrics`` (``ctihub.lib.metrics.add_collector``, from ``TelephonyConfig.ready``)."""

from __future__ import annotations

from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily


def listeners_by_state():
    from telephony.models import Listener

    sockets = GaugeMetricFamily("ctihub_listeners", "PBX event sockets by state.", labels=["state"])
    counts = dict(Listener.objects.values_list("state").annotate(n=Count("id")).values_list("state", "n"))
    for state in Listener.State.values:
        sockets.add_metric([state], counts.get(state, 0))
    yield sockets
