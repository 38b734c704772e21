"""
Token metrics and the activity log, under their former module name: the
usage parsers live in L{llamaswap.observe.usage}, the store in
L{llamaswap.observe.activity}.
"""

from llamaswap.observe.activity import ActivityLog, ActivityRecord
from llamaswap.observe.usage import *  # noqa: F401,F403
from llamaswap.observe.usage import (  # noqa: F401
    DEFAULT_MAX_JSON_BYTES,
    NO_TOKENS,
    BodyDecoder,
    JSONUsageParser,
    SSEUsageParser,
    TokenUsage,
    UsageMeter,
    filterAcceptEncoding,
    usageFromObjects,
)

__all__ = ["ActivityLog", "ActivityRecord"]
