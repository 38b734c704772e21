# -*- test-case-name: tests.test_config -*-
"""
Reading C{peers}: other llama-swap compatible servers that serve some
models (SPEC.md section 2.7).
"""

from __future__ import annotations

from typing import Dict, List

from llamaswap.config.errors import ConfigError
from llamaswap.config.fields import (
    readTimeouts,
    sanitizeParams,
    sanitizeStripParams,
    unknownMacro,
    urlProblem,
    wherePath,
)
from llamaswap.config.macros import leftoverInData, leftoverInText, substituteData, substituteText
from llamaswap.config.model import FiltersConfig, MacroList, PeerConfig, TimeoutsConfig
from llamaswap.config.nodes import Section, indexPath, line, nodeAt


def readPeers(sec: Section, globalMacros: MacroList, warnings: List[str]) -> Dict[str, PeerConfig]:
    """
    @return: the peers of C{sec} by id, in id order.

    @param warnings: where a model listed by more than one peer is reported.
    """
    peers: Dict[str, PeerConfig] = {}
    entries = {key: (keyNode, valueNode) for key, keyNode, valueNode in sec.entries()}
    servedBy: Dict[str, str] = {}
    for peerId in sorted(entries):
        keyNode, valueNode = entries[peerId]
        peer = _readPeer(sec.entrySection(peerId, keyNode, valueNode), peerId, globalMacros)
        for i, model in enumerate(peer.models):
            first = servedBy.setdefault(model, peerId)
            if first != peerId:
                warnings.append(
                    f"{indexPath(sec.childPath(peerId) + '.models', i)}: model {model} is also "
                    f"listed by peer {first}, which serves it"
                )
        peers[peerId] = peer
    return peers


def _readPeer(p: Section, peerId: str, globalMacros: MacroList) -> PeerConfig:
    proxy = p.str("proxy", "").strip()
    models = p.strList("models")
    apiKey = p.str("apiKey", "")
    filters = p.section("filters")
    stripParams = filters.str("stripParams", "")
    setParams, setParamsNode = filters.plainMapping("setParams")
    filters.finish()
    timeouts = readTimeouts(p.section("timeouts"), TimeoutsConfig(responseHeader=60))
    p.finish()

    if not proxy:
        raise p.error("proxy", "proxy is required")
    problem = urlProblem(proxy)
    if problem is not None:
        raise p.error("proxy", f"invalid peer proxy URL ({proxy}): {problem}")
    if not models:
        raise p.error("models", "peer models can not be empty")

    apiKey = substituteText(apiKey, globalMacros)
    stripParams = substituteText(stripParams, globalMacros)
    setParams = substituteData(setParams, globalMacros)
    leftover = leftoverInText(apiKey)
    if leftover is not None:
        raise p.error("apiKey", unknownMacro(leftover))
    leftover = leftoverInText(stripParams)
    if leftover is not None:
        raise filters.error("stripParams", unknownMacro(leftover))
    found = leftoverInData(setParams)
    if found is not None:
        where, name = found
        raise ConfigError(
            wherePath(filters.childPath("setParams"), where),
            unknownMacro(name),
            line(nodeAt(setParamsNode, list(where))),
        )
    return PeerConfig(
        id=peerId,
        proxy=proxy,
        models=tuple(m for m, _ in models),
        apiKey=apiKey,
        filters=FiltersConfig(
            stripParams=sanitizeStripParams(stripParams),
            setParams=sanitizeParams(setParams),
        ),
        timeouts=timeouts,
    )
