"""Reference solution of the exercise of ``02_load_balancing.ipynb`` (the answer key).

Least-connections that also weighs each server by how slow its responses have been:
cost = (requests in flight + 1) x recent latency (an exponentially weighted mean, EWMA).
A server that answers ten times slower needs ten times fewer requests in flight before
it is chosen, so it keeps a trickle of traffic (enough to notice when it recovers)
instead of its full share. This is the idea behind Finagle's and Linkerd's "peak EWMA"
balancers. On top, a latency-based outlier check ejects a server whose median latency
over an interval is more than three times the fleet's.
"""

from __future__ import annotations

from labsupport import load_balancing as lb


def latency_aware_least_connections(view: lb.View) -> int:
    """The usable server with the lowest (in flight + 1) x latency EWMA."""
    known = [view.latency_ewma[i] for i in view.candidates if view.completed[i]]
    # A server with no responses yet gets the typical latency of the others, not zero:
    # zero would make it look infinitely fast and send it every request until it answers.
    typical = sorted(known)[len(known) // 2] if known else 1.0  # seconds

    def cost(i: int) -> float:
        latency = view.latency_ewma[i] if view.completed[i] else typical
        return (view.active[i] + 1) * latency

    return min(view.candidates, key=cost)


# Belt and braces: Envoy-style outlier detection (its defaults: 10 s interval, 30 s base
# ejection, at most 10% of hosts) plus a latency check, for a server that is slow on
# every request. Ejection takes the slow server out entirely between probes.
answer = lb.Balancer(policy=latency_aware_least_connections,
                     outlier_detection=lb.OutlierDetection(latency_factor=3.0),
                     ewma_alpha=0.1)
