"""
A list of subscriber callbacks that hands out its own unsubscribe functions.
"""

from __future__ import annotations

from typing import Callable


class Subscribers(list):
    """
    The callbacks subscribed to a source, in subscription order.  How they
    are called (and what a failing one costs) is the source's business.
    """

    def add(self, callback: Callable) -> Callable[[], None]:
        """
        Subscribe C{callback}.

        @return: a function that unsubscribes it; calling it again does
            nothing.
        """
        self.append(callback)
        return lambda: self.discard(callback)

    def discard(self, callback: Callable) -> None:
        """
        Unsubscribe C{callback}, if it is subscribed.
        """
        try:
            self.remove(callback)
        except ValueError:
            pass
