"""
The web UI's vendored libraries (C{static/vendor/}) are exactly the files
pinned in C{static/vendor/manifest.json} (re-vendored by C{scripts/vendor-ui}).
"""

import hashlib
import json
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from llamaswap.web.ui import staticPath

VENDOR = Path(staticPath()) / "vendor"


class VendoredFilesTests(SynchronousTestCase):
    def setUp(self):
        self.manifest = json.loads((VENDOR / "manifest.json").read_text())

    def test_everyPinnedFileMatchesItsHash(self):
        for package in self.manifest["packages"]:
            self.assertRegex(package["version"], r"^\d+\.\d+\.\d+$", package["name"])
            self.assertTrue(package["integrity"].startswith("sha512-"), package["name"])
            for entry in package["files"]:
                data = (VENDOR / entry["to"]).read_bytes()
                self.assertEqual(hashlib.sha256(data).hexdigest(), entry["sha256"], entry["to"])

    def test_everyPackageShipsItsLicence(self):
        for package in self.manifest["packages"]:
            self.assertTrue(package["license"], package["name"])
            self.assertTrue(any(e["to"].startswith("licenses/") for e in package["files"]),
                            package["name"])

    def test_nothingUnpinnedIsVendored(self):
        pinned = {e["to"] for p in self.manifest["packages"] for e in p["files"]}
        present = {p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*") if p.is_file()}
        self.assertEqual(present - pinned, {"manifest.json"})
