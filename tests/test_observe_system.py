"""
Tests for L{llamaswap.observe.system}: the C{/proc} parsers and
L{SystemProbe} over fake C{/proc} trees.
"""

from __future__ import annotations

import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from llamaswap.observe.system import (
    SAMPLE_KEYS,
    SystemProbe,
    cpuPercent,
    parseLoadavg,
    parseMeminfo,
    parseNetDev,
    parseStat,
)
from tests.fakes import LOADAVG, MEMINFO, NET_DEV, STAT_1, STAT_2, FakeProc


MIB = 1048576


class ParserTests(SynchronousTestCase):
    def test_stat(self):
        self.assertEqual(parseStat(STAT_1), {0: (150, 1000), 1: (250, 1000)})

    def test_statShortLines(self):
        """
        Old kernels have fewer columns; missing ones count as 0.
        """
        self.assertEqual(parseStat("cpu0 10 0 10 80\ncpux 1 2 3\n"), {0: (20, 100)})

    def test_cpuPercent(self):
        self.assertEqual(cpuPercent(parseStat(STAT_1), parseStat(STAT_2)), [50.0, 75.0])

    def test_cpuPercentSinceBoot(self):
        self.assertEqual(cpuPercent(None, parseStat(STAT_1)), [15.0, 25.0])

    def test_cpuPercentNoTimeOrBackwards(self):
        first = {0: (10, 100), 1: (50, 100)}
        self.assertEqual(cpuPercent(first, {0: (10, 100), 1: (40, 200)}), [0.0, 0.0])

    def test_meminfo(self):
        mem = parseMeminfo(MEMINFO)
        self.assertEqual(mem["MemTotal"], 16 * 1024 * MIB)
        self.assertEqual(mem["HugePages_Total"], 0)
        self.assertEqual(mem["SwapFree"], 1536 * MIB)

    def test_loadavg(self):
        self.assertEqual(parseLoadavg(LOADAVG), (1.5, 0.75, 0.25))

    def test_netDev(self):
        self.assertEqual(parseNetDev(NET_DEV), [
            {"name": "eth0", "recv": 1050485753, "sent": 1293827},
            {"name": "wlan0", "recv": 123, "sent": 456},
        ])


class ProbeTests(SynchronousTestCase):
    def setUp(self):
        self.proc = FakeProc(self.mktemp())
        self.probe = SystemProbe(self.proc.root, platform="linux")

    def test_sample(self):
        sample = self.probe.sample()
        self.assertTrue(self.probe.available)
        self.assertEqual(set(sample), set(SAMPLE_KEYS))
        self.assertEqual(sample, {
            "cpuPerCore": [15.0, 25.0],           # since boot
            "memoryTotal": 16384 * MIB,
            # total - free - buffers - cached - SReclaimable
            "memoryUsed": (16384 - 4096 - 512 - 2048 - 512) * MIB,
            "memoryFree": 4096 * MIB,
            "swapTotal": 2048 * MIB,
            "swapUsed": 512 * MIB,
            "load": (1.5, 0.75, 0.25),
            "network": [{"name": "eth0", "recv": 1050485753, "sent": 1293827},
                        {"name": "wlan0", "recv": 123, "sent": 456}],
        })

    def test_twoReadings(self):
        """
        The second sample's CPU figures cover the time since the first.
        """
        self.probe.sample()
        self.proc.write("stat", STAT_2)
        self.assertEqual(self.probe.sample()["cpuPerCore"], [50.0, 75.0])
        self.assertEqual(self.probe.sample()["cpuPerCore"], [0.0, 0.0])

    def test_coreComesOnline(self):
        self.proc.write("stat", "cpu0 10 0 10 80 0 0 0 0\n")
        self.probe.sample()
        self.proc.write("stat", "cpu0 20 0 10 170 0 0 0 0\ncpu1 5 0 5 90 0 0 0 0\n")
        self.assertEqual(self.probe.sample()["cpuPerCore"], [10.0, 10.0])

    def test_containerCaches(self):
        """
        Caches larger than what is not free (seen in containers) do not
        make used memory negative.
        """
        self.proc.write("meminfo", "MemTotal: 1024 kB\nMemFree: 512 kB\nCached: 4096 kB\n")
        sample = self.probe.sample()
        self.assertEqual((sample["memoryUsed"], sample["swapTotal"], sample["swapUsed"]),
                         (512 * 1024, 0, 0))

    def test_optionalFilesMissing(self):
        self.proc.remove("loadavg")
        self.proc.remove(os.path.join("net", "dev"))
        sample = self.probe.sample()
        self.assertEqual((sample["load"], sample["network"]), ((0.0, 0.0, 0.0), []))

    def test_brokenFileRaises(self):
        """
        A file that cannot be parsed raises (the monitor logs it); the next
        sample works again.
        """
        self.probe.sample()
        self.proc.write("loadavg", "garbage\n")
        self.assertRaises(Exception, self.probe.sample)
        self.proc.write("loadavg", LOADAVG)
        self.assertEqual(self.probe.sample()["load"], (1.5, 0.75, 0.25))

    def test_notLinux(self):
        probe = SystemProbe(self.proc.root, platform="darwin")
        self.assertIsNone(probe.sample())
        self.assertFalse(probe.available)
        self.assertIn("darwin", probe.reason)

    def test_noProc(self):
        probe = SystemProbe(os.path.join(self.proc.root, "nothing"), platform="linux")
        self.assertIsNone(probe.sample())
        self.assertFalse(probe.available)
        self.assertIn("stat", probe.reason)
        self.assertIsNone(probe.sample())

    def test_realProc(self):
        """
        On this machine: a sample on Linux, unavailable elsewhere.
        """
        probe = SystemProbe()
        sample = probe.sample()
        if not sys.platform.startswith("linux"):
            self.assertIsNone(sample)
            return
        self.assertEqual(set(sample), set(SAMPLE_KEYS))
        self.assertTrue(sample["cpuPerCore"])
        self.assertGreater(sample["memoryTotal"], 0)
        self.assertNotIn("lo", [n["name"] for n in sample["network"]])
