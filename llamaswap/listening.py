# -*- test-case-name: tests.test_listening -*-
"""
How llamaswap listens: one service for every endpoint it serves on.
"""

from __future__ import annotations

from typing import Sequence, Union

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IProtocolFactory


def listeningService(
    listen: Union[str, Sequence[str]], factory: IProtocolFactory, reactor: object
) -> IService:
    """
    @param listen: one Twisted server endpoint description, or several.
    @return: a service named C{web} listening on every one of C{listen}
        with C{factory}; starting it raises at once if one cannot listen.
    """
    descriptions = [listen] if isinstance(listen, str) else list(listen)
    if len(descriptions) == 1:
        service = strports.service(descriptions[0], factory, reactor=reactor)
    else:
        service = MultiService()
        for description in descriptions:
            strports.service(description, factory, reactor=reactor).setServiceParent(service)
    service.setName("web")
    return service
