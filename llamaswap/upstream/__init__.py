"""
One model's upstream process: launching it in its own process group,
probing its readiness, and its lifecycle state machine.
"""

from llamaswap.upstream.health import HealthProbe
from llamaswap.upstream.machine import UpstreamMachine, UpstreamStartError
from llamaswap.upstream.process import Launcher

__all__ = ["UpstreamMachine", "UpstreamStartError", "Launcher", "HealthProbe"]
