"""
The router: which model runs, which request waits.

Importing this package registers the swap planners (L{ISwapPlanner} adapters
for the swap configurations) exactly once; see
L{llamaswap.router.planners}.
"""

import llamaswap.router.planners  # noqa: F401  (registers the adapters)
