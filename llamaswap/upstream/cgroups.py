# -*- test-case-name: tests.test_upstream_cgroups,tests.integration.test_upstream_real -*-
"""
One cgroup v2 per upstream run, when the daemon may make them.

When the daemon's own cgroup (C{0::<path>} in C{/proc/self/cgroup}) is
writable, as under systemd with C{Delegate=yes} or as root, L{CgroupTree}
makes C{llamaswap-<pid>-<n>/} in it and one leaf per run; the launcher moves
each spawned upstream into its leaf, so every descendant, whatever its
session or process group, is in it, and a stop ends with C{cgroup.kill}
and waits until the leaf is no longer populated.  Without one, stops rely
on the process group and the environment tag
(L{llamaswap.upstream.process.UPSTREAM_TAG}).

These are writes and reads of kernel pseudo-files: small and immediate.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Dict, List, Optional

from twisted.logger import Logger

__all__ = ["CgroupTree", "ownCgroup"]

_PROC_SELF = "/proc/self"

_trees = itertools.count(1)


def ownCgroup(procSelf: str = _PROC_SELF) -> Optional[str]:
    """
    @return: the directory of this process's cgroup v2 (the mount point of
        the cgroup2 file system joined with its C{0::} path), or L{None}
        when there is none.
    """
    try:
        with open(os.path.join(procSelf, "cgroup")) as f:
            lines = f.read().splitlines()
        with open(os.path.join(procSelf, "mountinfo")) as f:
            mounts = f.read().splitlines()
    except OSError:
        return None
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    if path is None:
        return None
    for mount in mounts:
        left, sep, right = mount.partition(" - ")
        if sep and right.split(" ", 1)[0] == "cgroup2":
            fields = left.split()
            root, point = fields[3], fields[4]
            relative = os.path.relpath(path, root) if root != "/" else path.lstrip("/")
            if relative.startswith(".."):
                continue
            return os.path.normpath(os.path.join(point, relative))
    return None


class CgroupTree:
    """
    The daemon's C{llamaswap-<pid>-<n>} cgroup and its per-run leaves.

    @ivar path: the C{llamaswap-<pid>-<n>} directory.
    """

    log = Logger()

    def __init__(self, path: str) -> None:
        self.path = path
        self._leaves: Dict[str, str] = {}

    @classmethod
    def find(cls, base: Optional[str] = None) -> Optional["CgroupTree"]:
        """
        Make the daemon's cgroup under C{base} (by default its own cgroup).

        @return: the tree, or L{None} when that cannot be done (no cgroup
            v2, not writable, no C{cgroup.kill}).
        """
        base = base if base is not None else ownCgroup()
        if base is None or not os.access(base, os.W_OK):
            return None
        path = os.path.join(base, "llamaswap-{}-{}".format(os.getpid(), next(_trees)))
        try:
            os.mkdir(path)
        except OSError:
            return None
        if not os.path.exists(os.path.join(path, "cgroup.kill")):
            _rmdir(path)
            return None
        return cls(path)

    def prepare(self, tag: str) -> Optional[str]:
        """
        Make the leaf of the run C{tag}.

        @return: the path of its C{cgroup.procs}, which the run's first
            process writes its pid to before it execs (so that nothing it
            forks is left outside), or L{None} when the leaf cannot be made.
        """
        leaf = os.path.join(self.path, re.sub(r"[^A-Za-z0-9_.-]", "_", tag))
        try:
            os.mkdir(leaf)
        except OSError as e:
            self.log.warn("could not make cgroup {leaf}: {error}", leaf=leaf, error=str(e))
            return None
        self._leaves[tag] = leaf
        return os.path.join(leaf, "cgroup.procs")

    def has(self, tag: str) -> bool:
        return tag in self._leaves

    def pids(self, tag: str) -> List[int]:
        """
        @return: the processes in the run's leaf.
        """
        leaf = self._leaves.get(tag)
        if leaf is None:
            return []
        try:
            with open(os.path.join(leaf, "cgroup.procs")) as f:
                return [int(line) for line in f.read().split()]
        except (OSError, ValueError):
            return []

    def populated(self, tag: str) -> bool:
        """
        @return: whether any live process is left in the run's leaf.
        """
        leaf = self._leaves.get(tag)
        if leaf is None:
            return False
        try:
            with open(os.path.join(leaf, "cgroup.events")) as f:
                return "populated 1" in f.read()
        except OSError:
            return False

    def kill(self, tag: str) -> None:
        """
        SIGKILL every process in the run's leaf (C{cgroup.kill}).
        """
        leaf = self._leaves.get(tag)
        if leaf is None:
            return
        try:
            with open(os.path.join(leaf, "cgroup.kill"), "w") as f:
                f.write("1")
        except OSError as e:
            self.log.warn("cgroup.kill of {leaf} failed: {error}", leaf=leaf, error=str(e))

    def release(self, tag: str) -> None:
        """
        Remove the run's (empty) leaf.
        """
        leaf = self._leaves.pop(tag, None)
        if leaf is not None:
            _rmdir(leaf)

    def close(self) -> None:
        """
        Remove every leaf left and the daemon's cgroup (at exit).
        """
        for tag in list(self._leaves):
            self.release(tag)
        _rmdir(self.path)


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass
