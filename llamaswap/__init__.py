"""
llamaswap: a Twisted daemon that starts, swaps and proxies local inference
servers on demand.
"""

from llamaswap._version import __version__

__all__ = ["__version__"]
