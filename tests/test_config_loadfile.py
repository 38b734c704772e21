"""
Tests for a model's C{loadFile:} setting: the file whose bytes load
progress watches, for backends whose C{cmd} does not name it with C{-m}.
"""

from __future__ import annotations

from textwrap import dedent

from twisted.trial.unittest import SynchronousTestCase

from llamaswap.config import ConfigError, loadConfigText
from llamaswap.service import launchSettings


def load(text: str):  # type: ignore[no-untyped-def]
    return loadConfigText(dedent(text).lstrip("\n"), {})


class LoadFileConfigTests(SynchronousTestCase):
    def test_defaultIsNone(self) -> None:
        config = load("""
            models:
              m: {cmd: "llama-server -m /models/m.gguf", proxy: "http://127.0.0.1:9"}
            """)
        self.assertIsNone(config.models["m"].loadFile)

    def test_macrosAreExpanded(self) -> None:
        config = load("""
            macros:
              models: /srv/weights
            models:
              v:
                cmd: "vllm serve ${models}/qwen --port ${PORT}"
                proxy: "http://127.0.0.1:${PORT}"
                loadFile: " ${models}/qwen/model.safetensors "
            """)
        self.assertEqual(config.models["v"].loadFile, "/srv/weights/qwen/model.safetensors")

    def test_unknownMacroIsAnError(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load("""
                models:
                  v:
                    cmd: "vllm serve"
                    proxy: "http://127.0.0.1:9"
                    loadFile: "${nowhere}/w.bin"
                """)
        self.assertEqual(caught.exception.keyPath, "models.v.loadFile")
        self.assertIn("nowhere", caught.exception.message)

    def test_notALaunchSetting(self) -> None:
        """
        Changing loadFile does not restart a running model on reload.
        """
        a = load('models:\n  m: {cmd: srv, proxy: "http://127.0.0.1:9", loadFile: /a.bin}\n').models["m"]
        b = load('models:\n  m: {cmd: srv, proxy: "http://127.0.0.1:9", loadFile: /b.bin}\n').models["m"]
        self.assertEqual(launchSettings(a), launchSettings(b))
