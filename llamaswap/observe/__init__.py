"""
Observability: what llamaswap shows about itself.

    - L{llamaswap.observe.logs}: log ring buffers (proxy, upstream, per
      model, combined) and the C{twisted.logger} observer of proxy lines.
    - L{llamaswap.observe.logstream}: C{/logs/stream*} resources.
    - L{llamaswap.observe.events}: the C{/api/events} SSE bus.
    - L{llamaswap.observe.tokens}: token metrics of answers, the activity
      log.
    - L{llamaswap.observe.captures}: request/response captures.
    - L{llamaswap.observe.exchange}: one relayed request observed end to
      end (tokens, activity, capture, Prometheus).
    - L{llamaswap.observe.prom}: the Prometheus registry and C{/metrics}.
    - L{llamaswap.observe.gpu}: the NVML probe and the GPU monitor.
    - L{llamaswap.observe.timing}: per-request phases, C{Server-Timing}.

Every piece takes plain values and injected collaborators (clock, thread
runner); none imports the reactor or holds global state.
"""
