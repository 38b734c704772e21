# -*- test-case-name: tests.test_demo -*-
"""
A small, fast, deterministic OpenAI- and Anthropic-compatible inference
server, used by the demo configuration, the integration tests and the
benchmarks as a stand-in for llama-server.

Run it with C{python -m llamaswap.demo --port 5800}; embed it with
L{DemoServer}.
"""

from llamaswap.demo.server import DemoError, DemoServer, DemoSettings

__all__ = ["DemoError", "DemoServer", "DemoSettings"]
