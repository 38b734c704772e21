# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin: C{twistd -n llamaswap -c config.yaml}.

Nothing else lives here.  Options and makeService are resolved lazily from
L{llamaswap.tap}, so building the plugin cache never imports the reactor.
"""

from twisted.application.service import ServiceMaker

llamaswap = ServiceMaker(
    "llamaswap",
    "llamaswap.tap",
    "Reverse proxy that starts, swaps and supervises local inference servers",
    "llamaswap",
)
