# -*- test-case-name: tests.test_config -*-
"""
The one exception the configuration loader raises.
"""

from __future__ import annotations

from typing import Optional


class ConfigError(Exception):
    """
    A configuration file that cannot be used.

    @ivar keyPath: where the problem is, as a dotted key path with list
        indices in brackets (C{"models.qwen.ttl"}, C{"models.llama.env[1]"},
        C{"matrix.sets.full"}); C{""} for problems of the file as a whole
        (unreadable file, YAML syntax, environment macros).
    @ivar message: what is wrong.  Where the reference implementation has an
        error text, this contains it verbatim.
    @ivar line: the 1-based line of the offending YAML node, or L{None} when
        not known.
    """

    def __init__(self, keyPath: str, message: str, line: Optional[int] = None) -> None:
        super().__init__(keyPath, message, line)
        self.keyPath = keyPath
        self.message = message
        self.line = line

    def __str__(self) -> str:
        text = f"{self.keyPath}: {self.message}" if self.keyPath else self.message
        if self.line is not None:
            text += f" (line {self.line})"
        return text

    def __repr__(self) -> str:
        return f"ConfigError({self.keyPath!r}, {self.message!r}, line={self.line!r})"
