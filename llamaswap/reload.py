# -*- test-case-name: tests.integration.test_reload -*-
"""
What a config reload did, as the daemon reports it to its log and to
C{POST /api/config/reload}.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import attr

__all__ = ["ReloadReport"]


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class ReloadReport:
    """
    The outcome of one reload.

    @ivar applied: whether the new config now serves.
    @ivar reason: why the reload was refused (C{applied} is then C{False}):
        the config error with its key path, or "another reload is in
        progress".
    @ivar kept: ids of models whose settings did not change: their upstream
        is untouched (those running keep running and serving).
    @ivar restarted: ids of running models stopped because their launch
        settings changed (they start again on their next request).
    @ivar changed: ids of models that were not running (stopped or failed)
        whose settings changed: nothing was stopped, and their next start
        uses the new settings.
    @ivar added: ids of models the new config adds.
    @ivar removed: ids of models the new config no longer has.
    """

    applied: bool
    reason: Optional[str] = None
    kept: Tuple[str, ...] = ()
    restarted: Tuple[str, ...] = ()
    changed: Tuple[str, ...] = ()
    added: Tuple[str, ...] = ()
    removed: Tuple[str, ...] = ()

    def toJSON(self) -> Dict[str, Any]:
        """
        @return: the report as the JSON object of C{/api/config/reload}.
        """
        return {
            "applied": self.applied,
            "reason": self.reason,
            "kept": sorted(self.kept),
            "restarted": sorted(self.restarted),
            "changed": sorted(self.changed),
            "added": sorted(self.added),
            "removed": sorted(self.removed),
        }
