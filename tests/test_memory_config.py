"""
The C{memory} configuration section (llamaswap.config.memory).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from llamaswap.config import ConfigError, loadConfigText
from llamaswap.config.memory import AUTO, MemoryConfig, ModelMemory, parseSize

GiB = 1024 ** 3
MODELS = """
models:
  a:
    cmd: llama-server -m /m/a.gguf --port ${PORT}
  b:
    cmd: llama-server -m /m/b.gguf --port ${PORT}
"""


def load(memory: str):
    return loadConfigText(MODELS + memory)


class SizeTests(SynchronousTestCase):
    def test_sizes(self) -> None:
        self.assertEqual(parseSize(123), 123)
        self.assertEqual(parseSize("8GiB"), 8 * GiB)
        self.assertEqual(parseSize("8G"), 8 * GiB)
        self.assertEqual(parseSize("1.5 gb"), 1_500_000_000)
        self.assertEqual(parseSize("512MiB"), 512 * 1024 ** 2)
        self.assertEqual(parseSize("100B"), 100)

    def test_bad(self) -> None:
        for bad in ("lots", "-1G", "8 parsecs", True, -5, None, "1e9"):
            self.assertRaises(ValueError, parseSize, bad)


class SectionTests(SynchronousTestCase):
    def test_absent(self) -> None:
        self.assertIsNone(loadConfigText(MODELS).memory)

    def test_full(self) -> None:
        config = load("""
memory:
  devices:
    0: auto
    1: 20GiB
  margin: 512MiB
  overhead: 100MiB
  learn: false
  stateFile: state/mem.json
  models:
    a: 4GiB
    b: {need: 1.5GiB, device: 1}
""")
        self.assertEqual(config.memory, MemoryConfig(
            budgets={"0": AUTO, "1": 20 * GiB}, margin=512 * 1024 ** 2,
            overhead=100 * 1024 ** 2, learn=False, stateFile="state/mem.json",
            models={"a": ModelMemory(4 * GiB, "0"), "b": ModelMemory(int(1.5 * GiB), "1")}))
        self.assertEqual(config.warnings, ())

    def test_budgetShorthand(self) -> None:
        memory = load("memory:\n  budget: 22GiB\n").memory
        self.assertEqual(memory.budgets, {"0": 22 * GiB})
        self.assertEqual(memory.model("a"), ModelMemory(None, "0"))
        self.assertEqual((memory.margin, memory.learn, memory.stateFile), (GiB, True, ""))

    def test_unknownKeyWarned(self) -> None:
        config = load("memory:\n  budget: auto\n  budgte: 1\n")
        [warning] = config.warnings
        self.assertRegex(warning, r"^memory\.budgte: unknown key \(line \d+\)")

    def assertError(self, text: str, keyPath: str, fragment: str) -> None:
        e = self.assertRaises(ConfigError, load, text)
        self.assertEqual(e.keyPath, keyPath)
        self.assertIn(fragment, e.message)
        self.assertIsNotNone(e.line)

    def test_errors(self) -> None:
        self.assertError("memory:\n  budget: lots\n", "memory.budget", "expected a size")
        self.assertError("memory:\n  devices: {gpu0: 1G}\n", "memory.devices.gpu0", "GPU index")
        self.assertError("memory:\n  devices: [1]\n", "memory.devices", "mapping")
        self.assertError("memory:\n  budget: 8G\n  models: {zz: 1G}\n", "memory.models.zz",
                         "not a configured model")
        self.assertError("memory:\n  budget: 8G\n  models: {a: {need: 1G, device: 3}}\n",
                         "memory.models.a.device", "has no budget")
        self.assertError("memory:\n  budget: 8G\n  margin: -1\n", "memory.margin", "negative")
        e = self.assertRaises(ConfigError, load, "memory:\n  models: {a: 1G}\n")
        self.assertIn("no budget is set", e.message)


class ExampleTests(SynchronousTestCase):
    def test_exampleSection(self) -> None:
        """
        The example configuration documents a memory section that loads.
        """
        from llamaswap.config import loadConfig
        from tests.integration.support import PROJECT_ROOT

        EXAMPLE = f"{PROJECT_ROOT}/config/config.example.yaml"

        config = loadConfig(EXAMPLE, environ={})
        self.assertEqual(config.warnings, ())
        self.assertEqual(config.memory.budgets, {"0": AUTO})
        self.assertEqual(config.memory.models["llama-70b"], ModelMemory(42 * GiB, "0"))
