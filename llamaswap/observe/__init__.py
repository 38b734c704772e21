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
    - L{llamaswap.observe.gpu}: the NVML probe.
    - L{llamaswap.observe.system}: CPU, memory, load and network from /proc.
    - L{llamaswap.observe.performance}: the monitor polling both off the
      reactor thread, one hour of samples for C{/api/performance}.
    - L{llamaswap.observe.timing}: per-request phases, C{Server-Timing}.
    - L{llamaswap.observe.streaming}: one client of a streamed response.
    - L{llamaswap.observe.observatory}: all of the above for one running
      llamaswap.

Every piece takes plain values and injected collaborators (clock, thread
runner); none imports the reactor or holds global state.
"""
