"""
Tests for L{llamaswap.upstream.cgroups}: finding the daemon's cgroup v2
from a fake C{/proc/self}, and a tree over a fake cgroup directory.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from llamaswap.upstream.cgroups import CgroupTree, ownCgroup


class OwnCgroupTests(SynchronousTestCase):
    def procSelf(self, cgroup: str, mountinfo: str) -> str:
        root = self.mktemp()
        os.mkdir(root)
        with open(os.path.join(root, "cgroup"), "w") as f:
            f.write(cgroup)
        with open(os.path.join(root, "mountinfo"), "w") as f:
            f.write(mountinfo)
        return root

    def test_unifiedHierarchy(self) -> None:
        root = self.procSelf(
            "0::/system.slice/llamaswap.service\n",
            "22 1 0:21 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
        self.assertEqual(ownCgroup(root), "/sys/fs/cgroup/system.slice/llamaswap.service")

    def test_hybridHierarchy(self) -> None:
        root = self.procSelf(
            "4:memory:/x\n0::/\n",
            "30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
            "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
        self.assertEqual(ownCgroup(root), "/sys/fs/cgroup/unified")

    def test_namespacedMountRoot(self) -> None:
        root = self.procSelf(
            "0::/user.slice/app\n",
            "22 1 0:21 /user.slice /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
        self.assertEqual(ownCgroup(root), "/sys/fs/cgroup/app")

    def test_noCgroup2(self) -> None:
        root = self.procSelf("1:cpu:/\n", "30 25 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw\n")
        self.assertIsNone(ownCgroup(root))
        self.assertIsNone(ownCgroup(self.mktemp()))


class TreeTests(SynchronousTestCase):
    def test_findNeedsCgroupKill(self) -> None:
        """
        A writable directory that is no cgroup (no cgroup.kill appears in a
        new directory) gives no tree, and leaves nothing behind.
        """
        base = self.mktemp()
        os.mkdir(base)
        self.assertIsNone(CgroupTree.find(base))
        self.assertEqual(os.listdir(base), [])

    def test_findNeedsAWritableCgroup(self) -> None:
        self.assertIsNone(CgroupTree.find("/nonexistent/cgroup"))

    def test_runWithoutALeafIsNeverAlive(self) -> None:
        tree = CgroupTree(self.mktemp())
        self.assertFalse(tree.has("t"))
        self.assertFalse(tree.populated("t"))
        self.assertEqual(tree.pids("t"), [])
        tree.kill("t")
        tree.release("t")
