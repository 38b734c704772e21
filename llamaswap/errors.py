# -*- test-case-name: tests.test_router,tests.test_multipart -*-
"""
The errors llamaswap answers clients with.

Each layer raises one of these; L{llamaswap.web.errors.renderError} is the
only place that turns them into HTTP responses.
"""


class LlamaSwapError(Exception):
    """
    An expected failure with a client-facing message.

    @ivar code: the HTTP status to answer with.
    @ivar kind: the OpenAI-style error C{type}.
    @ivar message: the client-facing message.
    """

    code = 500
    kind = "server_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadRequest(LlamaSwapError):
    code = 400
    kind = "invalid_request_error"


class NoModelIdentified(LlamaSwapError):
    """
    The request names no model (SPEC.md section 3.1).
    """

    code = 404
    kind = "invalid_request_error"

    def __init__(self, message: str = "no model id could be identified") -> None:
        super().__init__(message)


class UnknownModel(LlamaSwapError):
    code = 404
    kind = "model_not_found"


class BodyTooLarge(LlamaSwapError):
    code = 413
    kind = "invalid_request_error"


class TooManyRequests(LlamaSwapError):
    code = 429
    kind = "rate_limit_error"


class ModelStartFailed(LlamaSwapError):
    """
    The upstream of the requested model could not be started or made ready.
    """

    code = 502
    kind = "upstream_error"


class ModelUnloaded(LlamaSwapError):
    """
    The model a request waited for was unloaded before it became ready.
    """

    code = 500
    kind = "server_error"


class ShuttingDown(LlamaSwapError):
    code = 503
    kind = "server_error"


class UpstreamUnreachable(LlamaSwapError):
    code = 502
    kind = "upstream_error"


class UpstreamTimeout(LlamaSwapError):
    """
    The upstream sent no response headers, or no body bytes, within the
    model's C{timeouts}.
    """

    code = 504
    kind = "upstream_error"
