"""
The installed distribution: what the sdist and wheel ship.
"""

from __future__ import annotations

import importlib.metadata

from twisted.trial.unittest import SkipTest, SynchronousTestCase


class PackagingTests(SynchronousTestCase):
    def files(self) -> list[str]:
        """
        @return: the files of llamaswap installed from its wheel (not an
            C{.egg-info} a build left in the checkout).
        """
        for dist in importlib.metadata.distributions(name="llamaswap"):
            names = [str(f) for f in dist.files or []]
            if any(".dist-info/" in n for n in names):
                self.metadata = dist.metadata
                return names
        raise SkipTest("llamaswap is not installed from a wheel (run under tox)")

    def test_licenseShipsWithTheWheel(self) -> None:
        names = self.files()
        self.assertTrue(any(n.endswith("/LICENSE") and ".dist-info/" in n for n in names), names)
        self.assertEqual(self.metadata["License"], "MIT")

    def test_bundledConfigsAndUIShip(self) -> None:
        names = self.files()
        self.assertIn("llamaswap/configs/demo.yaml", names)
        self.assertIn("twisted/plugins/llamaswap_plugin.py", names)
