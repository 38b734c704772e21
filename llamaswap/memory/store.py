# -*- test-case-name: tests.test_memory_learning -*-
"""
The learned needs: what each model's processes really used on the GPU, kept
in a small JSON file so that it survives restarts.

The file (version 1)::

    {"version": 1,
     "models": {"qwen": {"needBytes": 5368709120, "cmd": "3f2a...",
                         "loads": 4}}}

C{cmd} is a digest of the model's command: a learned figure is only used
for the command it was learned from (another context size, other weights
or other flags need learning again).

L{readState} and L{writeState} block; L{NeedStore} calls them in a thread
and never on the reactor thread.  Writes are serialised and atomic (a
temporary file renamed over the old one), so a crash leaves the old file
or the new one, never half of one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from typing import Any, Callable, Dict, Optional

from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger

__all__ = ["NeedStore", "commandDigest", "readState", "writeState"]

VERSION = 1


@functools.lru_cache(maxsize=1024)
def commandDigest(cmd: str) -> str:
    """
    @return: a short digest of a model's command.
    """
    return hashlib.sha256(cmd.encode("utf-8")).hexdigest()[:16]


def readState(path: str) -> Dict[str, Dict[str, Any]]:
    """
    Read the state file (blocking).

    @return: model id -> entry; C{{}} when the file does not exist.
    @raise ValueError: the file is not a state file this version reads.
    @raise OSError: it exists but cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError(f"{path}: not a version {VERSION} memory state file")
    models = data.get("models")
    if not isinstance(models, dict):
        raise ValueError(f"{path}: no models mapping")
    entries = {}
    for modelId, entry in models.items():
        if (isinstance(entry, dict) and isinstance(entry.get("needBytes"), int)
                and not isinstance(entry.get("needBytes"), bool)
                and entry["needBytes"] > 0 and isinstance(entry.get("cmd"), str)):
            entries[str(modelId)] = dict(entry)
    return entries


def writeState(path: str, entries: Dict[str, Dict[str, Any]]) -> None:
    """
    Replace the state file with C{entries} (blocking, atomic).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".memory-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": VERSION, "models": entries}, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


class NeedStore:
    """
    The learned needs, in memory, saved to a file in a thread.

    @ivar path: the state file.
    """

    log = Logger()

    def __init__(self, path: str, inThread: Callable[..., Deferred]) -> None:
        """
        @param inThread: runs a blocking call in a thread:
            C{inThread(f, *args)} returns a L{Deferred} of its result.
        """
        self.path = path
        self._inThread = inThread
        self._entries: Dict[str, Dict[str, Any]] = {}
        self._lock = DeferredLock()
        self.loaded = False

    def load(self) -> Deferred[None]:
        """
        Read the file (in a thread); a missing file is an empty store, an
        unreadable one is logged and treated as empty (it is replaced by
        the next save).

        @return: a L{Deferred} that fires with L{None} once read; never
            fails.
        """
        def done(entries: Dict[str, Dict[str, Any]]) -> None:
            self._entries = {**entries, **self._entries}
            self.loaded = True

        def failed(f: Any) -> None:
            self.loaded = True
            self.log.warn("memory: cannot read the learned needs in {path}: {why}",
                          path=self.path, why=f.getErrorMessage())

        return self._inThread(readState, self.path).addCallbacks(done, failed)

    def get(self, modelId: str, cmd: str) -> Optional[int]:
        """
        @return: the bytes learned for C{modelId} running C{cmd}, or
            L{None}.
        """
        entry = self._entries.get(modelId)
        if entry is None or entry.get("cmd") != commandDigest(cmd):
            return None
        return int(entry["needBytes"])

    def learn(self, modelId: str, cmd: str, needBytes: int) -> Deferred[None]:
        """
        Record that C{modelId} running C{cmd} needs C{needBytes}, and save.

        @return: a L{Deferred} that fires with L{None} once saved; a failed
            save is logged, never raised.
        """
        digest = commandDigest(cmd)
        old = self._entries.get(modelId)
        loads = old.get("loads", 0) + 1 if old and old.get("cmd") == digest else 1
        self._entries[modelId] = {"needBytes": int(needBytes), "cmd": digest, "loads": loads}
        return self.save()

    def save(self) -> Deferred[None]:
        """
        Write the current entries (in a thread, one write at a time).

        @return: a L{Deferred} that fires with L{None}; never fails.
        """
        def write(_: object) -> Deferred[None]:
            snapshot = {k: dict(v) for k, v in self._entries.items()}
            return self._inThread(writeState, self.path, snapshot)

        def failed(f: Any) -> None:
            self.log.warn("memory: cannot save the learned needs to {path}: {why}",
                          path=self.path, why=f.getErrorMessage())

        d = self._lock.run(write, None)
        return d.addErrback(failed).addCallback(lambda _: None)
