"""
Test doubles shared by the test modules.

Each double is small, documented, and driven explicitly by the test: nothing
here runs a real process, opens a socket or touches the global reactor.

Processes (cf. C{twisted/runner/test/test_procmon.py} C{DummyProcessReactor}):
    - L{FakeProcess}: an C{IProcessTransport} whose exit and output the test
      drives.
    - L{FakeProcessReactor}: a L{MemoryReactorClock} with a fake
      C{spawnProcess}.
    - L{FakeLauncher}: an C{ILauncher} that records spawns and group signals
      and lets the test decide whether a group is alive.

TLS:
    - L{writeCertificate}: a self-signed certificate and its key, as PEM
      files, for C{--tls-cert-file}/C{--tls-key-file}.

Router:
    - L{FakeMachine}: an upstream machine whose start and stop the test
      completes by hand.

Observability:
    - L{FakeNvml}, L{FakeNVMLError}: the parts of C{pynvml} the GPU probe
      uses; L{FakeThreads}: an injected C{deferToThread}; L{FlakyProbe}: a
      probe whose samples the test scripts.
    - L{FakeProc}: a fake C{/proc} tree (L{STAT_1}, L{STAT_2}, ...).
    - L{samples}, L{value}: read a L{Metrics} exposition.

Upstreams:
    - L{FakeProbe}: an C{IHealthProbe} whose answers the test fires.
    - L{StubModelConfig}: the attributes of C{llamaswap.config.ModelConfig}
      that the upstream machine reads.

GPUs:
    - L{FakeGpuProbe}: an C{IGpuProbe} whose GPUs and per-process memory the
      test sets.
    - L{inlineThread}: a C{deferToThread} stand-in that runs the call at
      once and returns a fired L{Deferred}.
    - L{InlineThreadPool}: a thread pool that runs each call at once.

Files and clients:
    - L{buildGguf}, L{LLAMA}, L{TENSORS}: a small GGUF file's bytes, built
      from metadata and tensor shapes.
    - L{FakeAgents}: upstream clients over in-memory demo resources.
"""

from __future__ import annotations

import os
import struct
from types import SimpleNamespace
from typing import Any, List, Mapping, Sequence, Tuple

import attr
from zope.interface import implementer

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from prometheus_client.parser import text_string_to_metric_families

from llamaswap.interfaces import IGpuProbe, IHealthProbe, ILauncher
from llamaswap.memory.gguf import tensorBytes
from llamaswap.observe.prom import Metrics


class FakeProcess:
    """
    A fake C{IProcessTransport}, connected to its protocol at creation.

    @ivar argv: the full argv the process was spawned with.
    @ivar env: the environment dict it was spawned with.
    @ivar signals: what L{signalProcess} was called with, in order.
    @ivar exited: whether L{exit} was called.
    """

    def __init__(
        self,
        proto: Any,
        executable: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None,
        path: str | None,
        pid: int,
    ) -> None:
        self.proto = proto
        self.executable = executable
        self.argv = list(argv)
        self.env = env
        self.path = path
        self.pid: int | None = pid
        self.originalPid = pid
        self.signals: list[Any] = []
        self.stdinClosed = False
        self.exited = False
        proto.makeConnection(self)

    # IProcessTransport (the parts our code uses)
    def closeStdin(self) -> None:
        self.stdinClosed = True

    def closeStdout(self) -> None:
        pass

    def closeStderr(self) -> None:
        pass

    def closeChildFD(self, descriptor: int) -> None:
        pass

    def writeToChild(self, childFD: int, data: bytes) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def signalProcess(self, signalID: Any) -> None:
        self.signals.append(signalID)

    def loseConnection(self) -> None:
        pass

    # Test drivers
    def emit(self, data: bytes, fd: int = 1) -> None:
        """
        The process writes C{data} on C{fd} (1: stdout, 2: stderr).
        """
        self.proto.childDataReceived(fd, data)

    def exit(self, code: int = 0, signal: int | None = None) -> None:
        """
        The process exits and is reaped: C{processExited}, then
        C{processEnded}, as Twisted does when the pipes close with it.
        """
        reason = Failure(
            ProcessDone(0)
            if code == 0 and signal is None
            else ProcessTerminated(None if signal is not None else code, signal)
        )
        self.exited = True
        self.pid = None
        self.proto.processExited(reason)
        self.proto.processEnded(reason)


class FakeProcessReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} whose C{spawnProcess} creates L{FakeProcess}es.

    @ivar spawned: every process spawned, in order.
    @ivar spawnCalls: the C{(executable, args, env, path)} of each call.
    @ivar spawnError: if set, C{spawnProcess} raises it.
    """

    def __init__(self, firstPid: int = 1000) -> None:
        super().__init__()
        self.spawned: list[FakeProcess] = []
        self.spawnCalls: list[tuple[str, list[str], Any, Any]] = []
        self.spawnError: BaseException | None = None
        self._nextPid = firstPid

    def spawnProcess(
        self,
        processProtocol: Any,
        executable: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Any = None,
    ) -> FakeProcess:
        self.spawnCalls.append((executable, list(args), env, path))
        if self.spawnError is not None:
            raise self.spawnError
        process = FakeProcess(processProtocol, executable, args, env, path, self._nextPid)
        self._nextPid += 1
        self.spawned.append(process)
        return process


@implementer(ILauncher)
class FakeLauncher:
    """
    An C{ILauncher} (with C{survey}, C{signalPids} and C{reapOrphans}) that spawns
    L{FakeProcess}es with pid == pgid.

    A group is alive while its leader has not exited, or while its pgid is in
    L{lingering} (a grandchild that outlives the leader).

    @ivar spawned: every L{FakeProcess}, in order.
    @ivar spawns: the C{(model, argv, env)} of each spawn.
    @ivar signals: every C{(pgid, signal)} sent with L{signalGroup}.
    @ivar lingering: pgids whose group stays alive after the leader exits.
    @ivar spawnError: if set, L{spawn} raises it.
    @ivar exitDuringSpawn: if set, every process exits with this code before
        L{spawn} returns (Twisted can reap a fast child that early, leaving
        the transport's C{pid} L{None}).
    @ivar reaps: how many times L{reapOrphans} was called.
    @ivar escaped: pids of live processes that left their group (each
        L{survey} reports them; SIGKILL through L{signalPids} ends one).
    @ivar pidSignals: every C{(pid, signal)} sent with L{signalPids}.
    @ivar holdSurveys: if set, each L{survey} waits in L{heldSurveys} until
        L{answerSurvey}, as a look in a thread would (what is left is read
        when the test answers); otherwise it is answered at once.
    """

    def __init__(self, firstPid: int = 4000) -> None:
        self.spawned: list[FakeProcess] = []
        self.spawns: list[tuple[str, list[str], dict[str, str]]] = []
        self.signals: list[tuple[int, int]] = []
        self.lingering: set[int] = set()
        self.spawnError: BaseException | None = None
        self.exitDuringSpawn: int | None = None
        self.reaps = 0
        self.escaped: list[int] = []
        self.pidSignals: list[tuple[int, int]] = []
        self.holdSurveys = False
        self.heldSurveys: list[tuple[Deferred, list[int]]] = []
        self._nextPid = firstPid

    def spawn(
        self, model: str, argv: Sequence[str], env: Mapping[str, str], protocol: Any
    ) -> FakeProcess:
        if self.spawnError is not None:
            raise self.spawnError
        self.spawns.append((model, list(argv), dict(env)))
        process = FakeProcess(protocol, argv[0], argv, dict(env), None, self._nextPid)
        self._nextPid += 1
        self.spawned.append(process)
        if self.exitDuringSpawn is not None:
            process.exit(self.exitDuringSpawn)
        return process

    def signalGroup(self, pgid: int, signal: int) -> None:
        self.signals.append((pgid, signal))

    def groupAlive(self, pgid: int) -> bool:
        if pgid in self.lingering:
            return True
        return any(p.originalPid == pgid and not p.exited for p in self.spawned)

    def reapOrphans(self, candidates: Sequence[int] | None = None) -> int:
        self.reaps += 1
        return 0

    def survey(self, tag: str | None, pgid: int | None, pgids: Sequence[int]) -> Deferred:
        from llamaswap.upstream.process import Leftovers

        d: Deferred = Deferred()
        groups = list(pgids)
        if self.holdSurveys:
            self.heldSurveys.append((d, groups))
        else:
            d.callback(Leftovers(any(self.groupAlive(g) for g in groups), tuple(self.escaped)))
        return d

    def answerSurvey(self) -> None:
        """
        Answer the oldest held L{survey} with what is left now.
        """
        from llamaswap.upstream.process import Leftovers

        d, groups = self.heldSurveys.pop(0)
        d.callback(Leftovers(any(self.groupAlive(g) for g in groups), tuple(self.escaped)))

    def signalPids(self, pids: Sequence[int], signal: int) -> None:
        for pid in pids:
            self.pidSignals.append((pid, signal))
            if signal == 9 and pid in self.escaped:
                self.escaped.remove(pid)

    # Test helpers
    @property
    def last(self) -> FakeProcess:
        """
        The most recently spawned process.
        """
        return self.spawned[-1]

    def signalsTo(self, pgid: int) -> list[int]:
        """
        @return: the signals sent to the group C{pgid}, in order.
        """
        return [sig for (group, sig) in self.signals if group == pgid]


@implementer(IHealthProbe)
class FakeProbe:
    """
    An C{IHealthProbe} whose answers the test gives.

    @ivar checks: C{(url, Deferred)} for every probe, in order.
    @ivar cancelled: the URL of every probe its caller cancelled.
    """

    def __init__(self) -> None:
        self.checks: list[tuple[str, Deferred[bool]]] = []
        self.cancelled: list[str] = []

    def check(self, url: str) -> Deferred[bool]:
        d: Deferred[bool] = Deferred(lambda _: self.cancelled.append(url))
        self.checks.append((url, d))
        return d

    @property
    def urls(self) -> list[str]:
        """
        The URL of every probe, in order.
        """
        return [url for url, _ in self.checks]

    @property
    def pending(self) -> list[Deferred[bool]]:
        """
        The probes not answered (nor cancelled) yet.
        """
        return [d for _, d in self.checks if not d.called]

    def answer(self, healthy: bool) -> None:
        """
        Answer the one pending probe.
        """
        [d] = self.pending
        d.callback(healthy)


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class StubModelConfig:
    """
    The attributes of C{llamaswap.config.ModelConfig} that
    C{UpstreamMachine} reads, with harmless defaults.
    """

    id: str = "m1"
    argv: tuple[str, ...] = ("llama-server", "--port", "5800")
    cmd: str = "llama-server --port 5800"
    cmdStopArgv: tuple[str, ...] = ()
    proxy: str = "http://localhost:5800"
    checkEndpoint: str | None = "/health"
    env: tuple[tuple[str, str], ...] = ()
    unloadTimeout: int = 10
    port: int | None = None


@implementer(IGpuProbe)
class FakeGpuProbe:
    """
    An C{IGpuProbe} with GPUs and processes the test sets.

    @ivar gpus: GPU index -> C{(memoryTotal, memoryUsed)} in bytes; the
        used figure is what the test says, whatever the processes use.
    @ivar procs: C{(gpu, pid, memoryUsed)} of every compute process.
    @ivar calls: C{"sample"} or C{"processes"} for every call, in order.
    @ivar broken: when set, every call raises it.
    """

    def __init__(self, gpus: Mapping[int, tuple[int, int]] | None = None) -> None:
        self.gpus: dict[int, tuple[int, int]] = dict(gpus or {})
        self.procs: list[tuple[int, int, int]] = []
        self.calls: list[str] = []
        self.broken: Exception | None = None

    def sample(self) -> list[dict[str, Any]]:
        self.calls.append("sample")
        if self.broken is not None:
            raise self.broken
        return [{"id": index, "name": f"Fake GPU {index}", "uuid": f"GPU-{index}",
                 "memoryTotal": total, "memoryUsed": used}
                for index, (total, used) in sorted(self.gpus.items())]

    def processes(self) -> list[dict[str, Any]]:
        self.calls.append("processes")
        if self.broken is not None:
            raise self.broken
        return [{"gpu": gpu, "pid": pid, "memoryUsed": used} for gpu, pid, used in self.procs]


class InlineThreadPool:
    """
    A thread pool (for C{deferToThreadPool}) that runs each call at once.

    @ivar ran: how many calls it ran.
    """

    def __init__(self) -> None:
        self.ran = 0

    def callInThreadWithCallback(self, onResult: Any, f: Any, *args: Any, **kw: Any) -> None:
        self.ran += 1
        try:
            result = f(*args, **kw)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


def inlineThread(f: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
    """
    Run C{f(*args, **kwargs)} now, as a thread would later.

    @return: a L{Deferred} that has fired with its result or failure.
    """
    from twisted.internet.defer import maybeDeferred

    return maybeDeferred(f, *args, **kwargs)


def writeCertificate(directory: str, name: str = "localhost") -> tuple[str, str]:
    """
    Write a fresh self-signed certificate for C{name} (and 127.0.0.1) and
    its private key into C{directory}.

    @return: the paths of the certificate and the key files.
    """
    import datetime
    import ipaddress
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    certPath = os.path.join(directory, f"{name}.crt")
    keyPath = os.path.join(directory, f"{name}.key")
    with open(certPath, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(keyPath, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return certPath, keyPath


# -- the router's upstream machines ----------------------------------------


class FakeMachine:
    """
    An upstream machine whose start and stop the test completes by hand.

    Every call to L{start} and L{stop} is appended to C{log} as
    C{("start", modelId)} or C{("stop", modelId)}.
    """

    def __init__(self, model, onExit, log):
        self.modelId = model.id
        self.model = model
        self.state = "stopped"
        self.pid = None
        self.failure = None
        self.graces: list = []
        self.onExit = onExit
        self.log = log
        self.starting: Deferred | None = None
        self.stopWaiters: list[Deferred] = []

    def start(self):
        self.log.append(("start", self.modelId))
        if self.state == "ready":
            return succeed(None)
        self.state = "starting"
        self.starting = Deferred()
        return self.starting

    def stop(self, grace=None):
        self.log.append(("stop", self.modelId))
        self.graces.append(grace)
        if self.state in ("stopped", "failed"):
            return succeed(None)
        if self.starting is not None:
            starting, self.starting = self.starting, None
            from llamaswap.upstream.machine import StartAborted

            starting.errback(StartAborted())
        self.state = "stopping"
        d = Deferred()
        self.stopWaiters.append(d)
        return d

    # test drivers
    def becomeReady(self):
        self.state = "ready"
        self.pid = 100
        starting, self.starting = self.starting, None
        starting.callback(None)

    def failStart(self, message, linger=False):
        """
        The start fails.  With C{linger}, the machine stays C{stopping}
        (taking the failed process down) until L{finishStop}.
        """
        from llamaswap.upstream.machine import UpstreamStartError

        self.state = "stopping" if linger else "failed"
        starting, self.starting = self.starting, None
        self.failure = {"reason": message, "exitCode": 1, "lastLines": ["oops"]}
        starting.errback(UpstreamStartError(message, 1, ("oops",)))

    def finishStop(self, state="stopped"):
        self.state = state
        self.pid = None
        waiters, self.stopWaiters = self.stopWaiters, []
        for d in waiters:
            d.callback(None)

    def crash(self, linger=False):
        """
        The process exits on its own.  With C{linger}, the machine stays
        C{stopping} (its process group is still going away) until
        L{finishStop}, as the real one does.
        """
        self.state = "stopping" if linger else "failed"
        self.onExit(self.modelId, "exit code 1")


# -- NVML and threads for the GPU probe ------------------------------------


class FakeNVMLError(Exception):
    pass


class FakeNvml:
    """
    The parts of the C{pynvml} module that L{NvmlProbe} uses, over a list
    of fake GPUs.  Names come back as bytes (older bindings) for GPU 0 and
    text for the others.  GPU 0 reports its memory temperature, GPU 1 does
    not (C{NVML_ERROR_NOT_SUPPORTED} for the field).
    """

    NVML_TEMPERATURE_GPU = 0
    NVML_FI_DEV_MEMORY_TEMP = 82
    NVML_VALUE_TYPE_DOUBLE = 0
    NVML_VALUE_TYPE_UNSIGNED_INT = 1

    def __init__(self, gpus=None, initError=None):
        self.gpus = gpus if gpus is not None else [
            {"name": b"NVIDIA H100", "uuid": "GPU-aaaa", "gpu": 87, "memory": 40,
             "used": 30 * 2**30, "total": 80 * 2**30, "temp": 61, "power": 312500, "fan": 35,
             "vram": 72},
            {"name": "NVIDIA L4", "uuid": "GPU-bbbb", "gpu": 0, "memory": 0,
             "used": 2**20, "total": 24 * 2**30, "temp": 30, "power": None, "fan": None,
             "vram": None},
        ]
        self.initError = initError
        self.calls: list[str] = []

    def nvmlInit(self):
        self.calls.append("init")
        if self.initError is not None:
            raise self.initError

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.gpus[index]

    def nvmlDeviceGetName(self, handle):
        return handle["name"]

    def nvmlDeviceGetUUID(self, handle):
        return handle["uuid"]

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=handle["gpu"], memory=handle["memory"])

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=handle["used"], total=handle["total"],
                               free=handle["total"] - handle["used"])

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        return handle["temp"]

    def nvmlDeviceGetPowerUsage(self, handle):
        if handle["power"] is None:
            raise FakeNVMLError("Not Supported")
        return handle["power"]

    def nvmlDeviceGetFanSpeed(self, handle):
        if handle["fan"] is None:
            raise FakeNVMLError("Not Supported")
        return handle["fan"]

    def nvmlDeviceGetFieldValues(self, handle, fieldIds):
        assert fieldIds == [self.NVML_FI_DEV_MEMORY_TEMP]
        vram = handle["vram"]
        if isinstance(vram, float):
            return [SimpleNamespace(nvmlReturn=0, valueType=self.NVML_VALUE_TYPE_DOUBLE,
                                    value=SimpleNamespace(dVal=vram))]
        return [SimpleNamespace(nvmlReturn=3 if vram is None else 0,
                                valueType=self.NVML_VALUE_TYPE_UNSIGNED_INT,
                                value=SimpleNamespace(uiVal=vram or 0))]


class FakeThreads:
    """
    An injected C{deferToThread}: records each call and either runs it at
    once or leaves it pending until the test fires it.
    """

    def __init__(self, immediate=True):
        self.immediate = immediate
        self.calls = []
        self.pending: list[tuple[Deferred, object]] = []

    def __call__(self, f, *args, **kw):
        self.calls.append(f)
        if not self.immediate:
            d = Deferred()
            self.pending.append((d, lambda: f(*args, **kw)))
            return d
        try:
            return succeed(f(*args, **kw))
        except Exception:
            return fail()

    def runPending(self):
        pending, self.pending = self.pending, []
        for d, call in pending:
            try:
                d.callback(call())
            except Exception:
                d.errback()


class FlakyProbe:
    """
    A probe whose next samples the test scripts: a list, or an exception
    to raise.
    """

    available = True

    def __init__(self, results):
        self.results = list(results)
        self.calls = 0
        self.shutdowns = 0

    def sample(self):
        self.calls += 1
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    def shutdown(self):
        self.shutdowns += 1


# -- /proc for the system probe -------------------------------------------


# user nice system idle iowait irq softirq steal guest guest_nice
STAT_1 = """\
cpu  300 0 100 1500 100 0 0 0 0 0
cpu0 100 0 50 800 50 0 0 0 0 0
cpu1 200 0 50 700 50 0 0 0 0 0
intr 1583883 0 0 0
ctxt 2236752
btime 1700000000
"""


# cpu0: +100 busy of +200 (50%); cpu1: +150 busy +50 idle/iowait (75%).
STAT_2 = """\
cpu  550 0 100 1600 100 0 0 0 0 0
cpu0 200 0 50 900 50 0 0 0 0 0
cpu1 350 0 50 720 80 0 0 0 0 0
intr 1583899 0 0 0
"""


MEMINFO = """\
MemTotal:       16777216 kB
MemFree:         4194304 kB
MemAvailable:   10485760 kB
Buffers:          524288 kB
Cached:          2097152 kB
SwapCached:            0 kB
SReclaimable:     524288 kB
SwapTotal:       2097152 kB
SwapFree:        1572864 kB
HugePages_Total:       0
"""


LOADAVG = "1.50 0.75 0.25 3/812 12345\n"


NET_DEV = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|"
    "bytes    packets errs drop fifo colls carrier compressed\n"
    "    lo: 551292608  243157    0    0    0     0          0         0 "
    "551292608  243157    0    0    0     0       0          0\n"
    "  eth0: 1050485753   21628    0    0    0     0          0         0 "
    " 1293827   14778    0    0    0     0       0          0\n"
    "wlan0:123 1 0 0 0 0 0 0 456 2 0 0 0 0 0 0\n"
)


class FakeProc:
    """
    A fake C{/proc} tree in a temporary directory.
    """

    def __init__(self, root: str, stat=STAT_1, meminfo=MEMINFO, loadavg=LOADAVG,
                 netDev=NET_DEV) -> None:
        self.root = root
        os.makedirs(os.path.join(root, "net"))
        for name, text in (("stat", stat), ("meminfo", meminfo), ("loadavg", loadavg),
                           (os.path.join("net", "dev"), netDev)):
            if text is not None:
                self.write(name, text)

    def write(self, name: str, text: str) -> None:
        with open(os.path.join(self.root, name), "w") as f:
            f.write(text)

    def remove(self, name: str) -> None:
        os.remove(os.path.join(self.root, name))


# -- reading /metrics -----------------------------------------------------


def samples(metrics: Metrics) -> dict[str, list]:
    """
    Parse the exposition; map each sample name to its C{(labels, value)}
    pairs.
    """
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(metrics.render().decode("utf-8")):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(found, sampleName, **labels):
    matches = [v for sampleLabels, v in found[sampleName]
               if all(sampleLabels.get(k) == w for k, w in labels.items())]
    assert len(matches) == 1, (sampleName, labels, found.get(sampleName))
    return matches[0]


# -- GGUF files built by the tests -------------------------------------------


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _kv(key: str, value: Any) -> bytes:
    if isinstance(value, bool):
        return _string(key) + struct.pack("<I?", 7, value)
    if isinstance(value, int):
        return _string(key) + struct.pack("<II", 4, value)
    if isinstance(value, float):
        return _string(key) + struct.pack("<If", 6, value)
    if isinstance(value, str):
        return _string(key) + struct.pack("<I", 8) + _string(value)
    if isinstance(value, list):
        items = b"".join(_string(v) for v in value)
        return _string(key) + struct.pack("<IIQ", 9, 8, len(value)) + items
    raise TypeError(value)


def buildGguf(metadata: dict, tensors: List[Tuple[str, Tuple[int, ...], int]],
              version: int = 3) -> bytes:
    """
    @return: the bytes of a GGUF header with C{metadata} and C{tensors}
        (name, dims, ggml type), and no tensor data.
    """
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    out += b"".join(_kv(k, v) for k, v in metadata.items())
    offset = 0
    for name, dims, kind in tensors:
        out += _string(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", kind, offset)
        offset += tensorBytes(kind, _product(dims)) if kind in (0, 8, 12) else 32
    return out


def _product(dims):
    n = 1
    for d in dims:
        n *= d
    return n


LLAMA = {
    "general.architecture": "llama",
    "general.name": "tiny",
    "llama.block_count": 2,
    "llama.context_length": 4096,
    "llama.embedding_length": 64,
    "llama.feed_forward_length": 128,
    "llama.attention.head_count": 4,
    "llama.attention.head_count_kv": 2,
    "llama.vocab_size": 1000,
    "tokenizer.ggml.tokens": [f"t{i}" for i in range(2000)],
    "general.flag": True,
    "llama.rope.freq_base": 10000.0,
}
TENSORS = [("token_embd.weight", (64, 1000), 8), ("blk.0.attn_q.weight", (64, 64), 12),
           ("output_norm.weight", (64,), 0)]


# -- upstream clients over in-memory resources -------------------------------


class FakeAgents:
    """
    Hands out one in-memory agent per model, each over a demo resource.
    """

    def __init__(self, clock):
        self.clock = clock
        self.agents = {}

    def clientFor(self, key, url=b"", parallel=10, timeouts=None):
        from treq.testing import RequestTraversalAgent

        from llamaswap.demo import DemoServer, DemoSettings

        if key not in self.agents:
            demo = DemoServer(DemoSettings(model=key, tokens=3), self.clock, pid=4242)
            self.agents[key] = RequestTraversalAgent(demo.resource())
        return self.agents[key]
