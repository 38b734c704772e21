"""
Tests for L{llamaswap.router.router}: the single-model router.
"""

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from llamaswap.config import loadConfigText
from llamaswap.errors import (
    ModelStartFailed,
    ModelUnloaded,
    ShuttingDown,
    TooManyRequests,
    UnknownModel,
)
from llamaswap.router.router import RouterService

CONFIG = """
models:
  a:
    cmd: srv-a --port ${PORT}
    aliases: [alpha]
  b:
    cmd: srv-b --port ${PORT}
  c:
    cmd: srv-c --port ${PORT}
    ttl: 5
    concurrencyLimit: 2
"""


class FakeMachine:
    """
    An upstream machine whose start and stop the test completes by hand.
    """

    def __init__(self, model, onExit, log):
        self.modelId = model.id
        self.state = "stopped"
        self.pid = None
        self.onExit = onExit
        self.log = log
        self.starting: Deferred | None = None
        self.stopping: Deferred | None = None

    def start(self):
        self.log.append(("start", self.modelId))
        if self.state == "ready":
            return succeed(None)
        self.state = "starting"
        self.starting = Deferred()
        return self.starting

    def stop(self, grace=None):
        self.log.append(("stop", self.modelId))
        if self.state in ("stopped", "failed"):
            return succeed(None)
        if self.starting is not None:
            starting, self.starting = self.starting, None
            starting.errback(RuntimeError("aborted"))
        self.state = "stopping"
        self.stopping = Deferred()
        return self.stopping

    # test drivers
    def becomeReady(self):
        self.state = "ready"
        self.pid = 100
        starting, self.starting = self.starting, None
        starting.callback(None)

    def failStart(self, message):
        from llamaswap.upstream import UpstreamStartError

        self.state = "failed"
        starting, self.starting = self.starting, None
        starting.errback(UpstreamStartError(message))

    def finishStop(self):
        self.state = "stopped"
        self.pid = None
        stopping, self.stopping = self.stopping, None
        stopping.callback(None)

    def crash(self):
        self.state = "failed"
        self.onExit(self.modelId, "exit code 1")


class RouterTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.log = []
        self.config = loadConfigText(CONFIG)
        self.router = RouterService(
            self.config,
            reactor=self.clock,
            machineFactory=lambda model, onExit: FakeMachine(model, onExit, self.log),
        )
        self.m = self.router.machines

    def ready(self, name):
        """
        Acquire C{name} and bring its machine up; return the lease.
        """
        d = self.router.acquire(name)
        self.m[self.config.resolve(name)].becomeReady()
        return self.successResultOf(d)

    def test_firstRequestStartsTheModel(self):
        d = self.router.acquire("a")
        self.assertNoResult(d)
        self.assertEqual(self.log, [("start", "a")])
        self.m["a"].becomeReady()
        lease = self.successResultOf(d)
        self.assertEqual((lease.modelId, lease.baseURL), ("a", "http://localhost:5800"))

    def test_aliasResolvesToTheModel(self):
        lease = self.ready("alpha")
        self.assertEqual(lease.modelId, "a")

    def test_unknownModelIsRefused(self):
        self.assertRaises(UnknownModel, self.router.acquire, "nope")

    def test_concurrentRequestsShareOneStart(self):
        ds = [self.router.acquire("a") for _ in range(3)]
        self.m["a"].becomeReady()
        self.assertEqual([self.successResultOf(d).modelId for d in ds], ["a"] * 3)
        self.assertEqual(self.log, [("start", "a")])

    def test_readyModelIsServedWithoutSwap(self):
        self.ready("a").release()
        self.log.clear()
        self.successResultOf(self.router.acquire("a"))
        self.assertEqual(self.log, [])

    def test_swapWaitsForInFlightRequestsToDrain(self):
        lease = self.ready("a")
        self.log.clear()
        d = self.router.acquire("b")
        self.assertEqual(self.log, [])
        self.assertNoResult(d)
        lease.release()
        self.assertEqual(self.log, [("stop", "a")])
        self.m["a"].finishStop()
        self.assertEqual(self.log, [("stop", "a"), ("start", "b")])
        self.m["b"].becomeReady()
        self.assertEqual(self.successResultOf(d).modelId, "b")
        self.assertEqual(self.m["a"].state, "stopped")

    def test_requestsForLiveModelQueueBehindAPendingSwap(self):
        lease = self.ready("a")
        waitingB = self.router.acquire("b")
        laterA = self.router.acquire("a")
        self.assertNoResult(laterA)
        lease.release()
        self.m["a"].finishStop()
        self.m["b"].becomeReady()
        self.successResultOf(waitingB).release()
        self.m["b"].finishStop()
        self.m["a"].becomeReady()
        self.assertEqual(self.successResultOf(laterA).modelId, "a")

    def test_pendingRequestsForTheStartedModelAreCollated(self):
        lease = self.ready("a")
        b1 = self.router.acquire("b")
        c1 = self.router.acquire("c")
        b2 = self.router.acquire("b")
        lease.release()
        self.m["a"].finishStop()
        self.m["b"].becomeReady()
        self.successResultOf(b1)
        self.successResultOf(b2)
        self.assertNoResult(c1)

    def test_releaseIsIdempotent(self):
        lease = self.ready("a")
        lease.release()
        lease.release()
        self.assertEqual(self.router._inFlight["a"], 0)

    def test_cancelledWaiterLeavesTheQueue(self):
        lease = self.ready("a")
        d = self.router.acquire("b")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        lease.release()
        self.assertNotIn(("stop", "a"), self.log)
        self.assertEqual(self.m["a"].state, "ready")

    def test_startFailureFailsEveryWaiter(self):
        ds = [self.router.acquire("a") for _ in range(2)]
        self.m["a"].failStart("upstream command exited prematurely")
        for d in ds:
            f = self.failureResultOf(d, ModelStartFailed)
            self.assertIn("upstream command exited prematurely", f.value.message)

    def test_nextRequestAfterFailureStartsAgain(self):
        d = self.router.acquire("a")
        self.m["a"].failStart("boom")
        self.failureResultOf(d)
        d = self.router.acquire("a")
        self.assertEqual(self.log, [("start", "a"), ("start", "a")])
        self.m["a"].becomeReady()
        self.successResultOf(d)

    def test_crashedModelIsStartedAgain(self):
        self.ready("a").release()
        self.m["a"].crash()
        d = self.router.acquire("a")
        self.assertEqual(self.log[-1], ("start", "a"))
        self.m["a"].becomeReady()
        self.successResultOf(d)

    def test_concurrencyLimitRefusesTheExcess(self):
        self.ready("c")
        self.successResultOf(self.router.acquire("c"))
        self.assertRaises(TooManyRequests, self.router.acquire, "c")

    def test_ttlUnloadsAnIdleModel(self):
        self.ready("c").release()
        self.clock.advance(4.9)
        self.assertNotIn(("stop", "c"), self.log)
        self.clock.advance(0.2)
        self.assertIn(("stop", "c"), self.log)
        self.m["c"].finishStop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ttlDoesNotCutALongRequest(self):
        lease = self.ready("c")
        self.clock.advance(60)
        self.assertNotIn(("stop", "c"), self.log)
        lease.release()
        self.clock.advance(5.1)
        self.assertIn(("stop", "c"), self.log)

    def test_requestResetsTheTtl(self):
        self.ready("c").release()
        self.clock.advance(4)
        self.successResultOf(self.router.acquire("c")).release()
        self.clock.advance(4)
        self.assertNotIn(("stop", "c"), self.log)

    def test_unloadFailsWaitersAndStops(self):
        d = self.router.acquire("a")
        done = self.router.unload("a")
        f = self.failureResultOf(d, ModelUnloaded)
        self.assertIn("model unloaded", f.value.message)
        self.m["a"].finishStop()
        self.successResultOf(done)

    def test_unloadAllStopsEverything(self):
        self.ready("a").release()
        done = self.router.unload()
        self.assertNoResult(done)
        self.m["a"].finishStop()
        self.successResultOf(done)
        self.assertEqual(self.router.runningModels(), [])

    def test_runningShowsLiveModels(self):
        self.ready("a")
        [record] = self.router.runningModels()
        self.assertEqual(record["model"], "a")
        self.assertEqual(record["state"], "ready")
        self.assertEqual(record["inFlight"], 1)
        self.assertEqual(record["proxy"], "http://localhost:5800")

    def test_stopServiceFailsWaitersAndStopsEveryModel(self):
        self.router.startService()
        self.ready("a")
        waiting = self.router.acquire("b")
        stopped = self.router.stopService()
        self.failureResultOf(waiting, ShuttingDown)
        self.assertNoResult(stopped)
        self.m["a"].finishStop()
        self.successResultOf(stopped)
        self.assertRaises(ShuttingDown, self.router.acquire, "a")
