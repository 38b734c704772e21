# -*- test-case-name: tests.test_config -*-
"""
Reading the swap configuration: C{groups} or C{matrix} (SPEC.md section
2.5 and 2.6).
"""

from __future__ import annotations

import re
from typing import Dict, List, Mapping, Set

from yaml.nodes import ScalarNode

from llamaswap.config.errors import ConfigError
from llamaswap.config.matrix import MatrixSetError, expandSets
from llamaswap.config.model import (
    DEFAULT_GROUP,
    ExpandedSet,
    GroupConfig,
    GroupsConfig,
    MatrixConfig,
    ModelConfig,
)
from llamaswap.config.nodes import Section, describe, indexPath, isNull, line

VAR_KEY = re.compile(r"^[a-zA-Z0-9]{1,8}$")


def readGroups(
    sec: Section, models: Mapping[str, ModelConfig], aliasOwner: Mapping[str, str]
) -> GroupsConfig:
    """
    @return: the groups of C{sec}, with every model no group names in the
        default group.
    """
    groups: Dict[str, GroupConfig] = {}
    usage: Dict[str, str] = {}
    for groupId, keyNode, valueNode in sec.entries():
        g = sec.entrySection(groupId, keyNode, valueNode)
        swap = g.bool("swap", True)
        exclusive = g.bool("exclusive", True)
        persistent = g.bool("persistent", False)
        members = g.strList("members")
        g.finish()
        seen: Set[str] = set()
        for i, (member, node) in enumerate(members):
            memberPath = indexPath(g.childPath("members"), i)
            if member in seen:
                raise ConfigError(
                    memberPath,
                    f"duplicate model member {member} found in group: {groupId}",
                    line(node),
                )
            seen.add(member)
            _checkMember(member, groupId, memberPath, line(node), usage, models, aliasOwner)
            usage[member] = groupId
        groups[groupId] = GroupConfig(
            id=groupId,
            swap=swap,
            exclusive=exclusive,
            persistent=persistent,
            members=tuple(m for m, _ in members),
        )
    _addDefaultGroup(groups, [m for m in sorted(models) if m not in usage])
    return GroupsConfig(groups=groups)


def _checkMember(
    member: str,
    groupId: str,
    memberPath: str,
    lineNo: "int | None",
    usage: Mapping[str, str],
    models: Mapping[str, ModelConfig],
    aliasOwner: Mapping[str, str],
) -> None:
    if member in usage:
        raise ConfigError(
            memberPath,
            f"model member {member} is used in multiple groups: {usage[member]} and {groupId}",
            lineNo,
        )
    if member not in models:
        hint = ""
        if member in aliasOwner:
            hint = f" ({member} is an alias of {aliasOwner[member]}; use the model id)"
        raise ConfigError(memberPath, f"unknown model {member} in group: {groupId}{hint}", lineNo)


def _addDefaultGroup(groups: Dict[str, GroupConfig], ungrouped: List[str]) -> None:
    existing = groups.pop(DEFAULT_GROUP, None)
    if existing is None:
        groups[DEFAULT_GROUP] = GroupConfig(id=DEFAULT_GROUP, members=tuple(ungrouped))
    else:
        groups[DEFAULT_GROUP] = GroupConfig(
            id=DEFAULT_GROUP,
            swap=existing.swap,
            exclusive=existing.exclusive,
            persistent=existing.persistent,
            members=tuple(sorted(existing.members + tuple(ungrouped))),
        )


def readMatrix(top: Section, models: Mapping[str, ModelConfig]) -> MatrixConfig:
    """
    @return: the C{matrix} of C{top}, its sets expanded.
    @raise ConfigError: with a message starting C{matrix: }.
    """
    try:
        return _matrix(top.section("matrix"), models)
    except ConfigError as e:
        if not e.message.startswith("matrix: "):
            e.message = "matrix: " + e.message
            e.args = (e.keyPath, e.message, e.line)
        raise


def _matrixVars(sec: Section, models: Mapping[str, ModelConfig]) -> Dict[str, str]:
    varsSec = sec.section("vars")
    variables: Dict[str, str] = {}
    for varId, keyNode, valueNode in varsSec.entries():
        path = varsSec.childPath(varId)
        if not VAR_KEY.match(varId):
            raise ConfigError(
                path, f'var key "{varId}" must be alphanumeric and 1-8 characters', line(keyNode)
            )
        if not isinstance(valueNode, ScalarNode):
            raise ConfigError(path, f"expected a model id, got {describe(valueNode)}", line(valueNode))
        modelId = "" if isNull(valueNode) else str(valueNode.value)
        if modelId not in models:
            raise ConfigError(
                path, f'var key "{varId}" references unknown model "{modelId}"', line(valueNode)
            )
        variables[varId] = modelId
    if not variables:
        raise ConfigError(varsSec.path, "matrix must define at least one var", sec.line())
    return variables


def _matrixCosts(sec: Section, variables: Mapping[str, str]) -> Dict[str, int]:
    costsSec = sec.section("evict_costs")
    costs: Dict[str, int] = {}
    for varId in costsSec.keys():
        cost = costsSec.int(varId, 1)
        if cost <= 0:
            raise costsSec.error(
                varId, f'evict_cost for "{varId}" must be a positive integer, got {cost}'
            )
        if varId not in variables:
            raise costsSec.error(
                varId, f'evict_costs: unknown var ID "{varId}"', costsSec.keyNode(varId)
            )
        costs[varId] = cost
    return costs


def _matrix(sec: Section, models: Mapping[str, ModelConfig]) -> MatrixConfig:
    variables = _matrixVars(sec, models)
    costs = _matrixCosts(sec, variables)
    setsSec = sec.section("sets")
    sets: Dict[str, str] = {}
    for name in setsSec.keys():
        sets[name] = setsSec.str(name, "")
    if not sets:
        raise ConfigError(setsSec.path, "matrix must define at least one set", sec.line())
    sec.finish()

    try:
        expanded = expandSets(sets, variables)
    except MatrixSetError as e:
        if e.setName is None:
            raise ConfigError(setsSec.path, e.message, setsSec.line()) from None
        raise setsSec.error(e.setName, e.message) from None
    return MatrixConfig(
        vars=variables,
        evictCosts=costs,
        sets=sets,
        expanded=tuple(
            ExpandedSet(
                name=name,
                dsl=dsl,
                varIds=varIds,
                models=frozenset(variables[v] for v in varIds),
            )
            for name, dsl, varIds in expanded
        ),
    )
