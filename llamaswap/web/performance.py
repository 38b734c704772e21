# -*- test-case-name: tests.test_observe_performance -*-
"""
C{GET /api/performance[?after=RFC3339]}: the performance monitor's samples
(SPEC.md section 3.9).
"""

from __future__ import annotations

import json

from twisted.web.resource import Resource

from llamaswap.errors import BadRequest, LlamaSwapError
from llamaswap.observe.performance import INVALID_AFTER, NOT_AVAILABLE, parseRFC3339
from llamaswap.web.errors import renderError


class PerformanceUnavailable(LlamaSwapError):
    """
    C{performance.disabled}: there is no monitor.
    """

    code = 503
    kind = "server_error"


class PerformanceResource(Resource):
    """
    C{GET /api/performance[?after=RFC3339]} (SPEC.md section 3.9): the
    monitor's L{llamaswap.observe.performance.PerformanceMonitor.snapshot}
    as JSON.  A bad C{after} is
    400 C{invalid 'after' timestamp, use RFC3339 format}; without a monitor
    (C{performance.disabled}) 503 C{performance monitor not available}.
    Errors take the shape of every other route's
    (L{llamaswap.web.errors.renderError}).  An empty C{after} is no filter.
    """

    isLeaf = True

    def __init__(self, monitor) -> None:
        """
        @param monitor: the monitor, or L{None} when disabled.
        """
        super().__init__()
        self.monitor = monitor

    def render_GET(self, request) -> bytes:
        if self.monitor is None:
            return renderError(request, PerformanceUnavailable(NOT_AVAILABLE))
        after = None
        values = (request.args or {}).get(b"after") or []
        text = values[0].decode("utf-8", "replace") if values else ""
        if text:
            try:
                after = parseRFC3339(text)
            except ValueError:
                return renderError(request, BadRequest(INVALID_AFTER))
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.monitor.snapshot(after)).encode("utf-8")
