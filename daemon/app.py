"""The daemon's life, top to bottom: recover, probe, connect, advertise, pull; drain; stop.

Every long-lived task (outbox publisher, one puller per pool, heartbeat, watchdog, housekeeping,
each job's watcher) runs under one supervisor (common.supervise), each with the policy that fits
it (see below): a crash is logged with its traceback and the task restarted with back-off, or,
where that cannot be right, the daemon stops with status 1 rather than limping on. The first SIGTERM
drains (stop fetching, let jobs finish up to drain_deadline, then stop them and nak so JetStream
redelivers); a second SIGTERM or SIGINT forces. SIGHUP reloads labels, pools, slots, limits,
windows, aging and NATS logins.

Processing windows (daemon.pull.windows) come from the config file, or from an operator's
`node.windows` command, which is kept in the state dir (daemon.pull.windowstore) and wins over the
file, across restarts and reloads, until it is reset. `now` is the clock the windows are read
with (tests inject one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from common.sdnotify import Notifier, watchdog_task
from common.supervise import Policy, Supervisor
from daemon.config import DaemonConfig
from daemon.control_listener import ControlListener
from daemon.diskguard import DiskGuard
from daemon.encoder_health import EncoderHealthTracker
from daemon.heartbeat import Advertiser, HeartbeatSources
from daemon.housekeeping import count_job, gauges, prune
from daemon.job.deps import JobDeps, OperationRunner
from daemon.job.endquery import EndQuery
from daemon.job.failures import FailureCounts
from daemon.job.handle import StopKind
from daemon.job.redelivery import hand_back_interrupted, settle_unsettled_ends
from daemon.job.requirements import NodeView
from daemon.job.run import run_job
from daemon.job.running import RunningJobs
from daemon.journal.reporter import Reporter, new_event_id
from daemon.metrics import Metrics
from daemon.ops import run_operation
from daemon.probe.capacity import served_capacity
from daemon.pull.puller import Clock, PoolPuller, PullerSet, utc_now
from daemon.pull.slots import Slots
from daemon.pull.windows import Windows
from daemon.pull.windowstore import load_override, save_override
from daemon.reload import reload_daemon
from daemon.wiring import Backend, open_backend
from schemas.events import NodeStateChanged
from schemas.nodes import NodeCapabilities, NodeState
from schemas.results import JobResult
from schemas.subjects import Subjects
from schemas.windows import WindowRule

log = logging.getLogger("flotilla.daemon")
#: For a task whose next run is as good as the last (it keeps no state of its own that a crash
#: could leave wrong). Back-off 0.5 s doubling to 30 s; ten crashes with no healthy minute between
#: mean a bug a restart will not fix: the daemon exits 1, for systemd to restart it whole.
RESTART = Policy(give_up_after=10)
#: For a task a restart cannot make right: its crash stops the daemon with status 1.
FATAL = Policy(restart=False)


class Daemon:
    def __init__(
        self,
        cfg: DaemonConfig,
        *,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
        capabilities: NodeCapabilities | None = None,
        operation_runner: OperationRunner = run_operation,
        now: Clock = utc_now,
    ) -> None:
        """`capabilities` and `operation_runner` are for `flotilla sim` (control/sim): given
        capabilities are advertised instead of a probe's, and the runner stands in for ffmpeg;
        everything else is the daemon's own."""
        self.cfg, self.config_path = cfg, config_path
        self._caps, self._run_operation = capabilities, operation_runner
        self.notifier = notifier or Notifier({})
        self.subjects = Subjects(cfg.nats.prefix, cfg.nats.partitions)
        self.running = RunningJobs()
        self.metrics = Metrics()
        self.slots = Slots({})
        self.node = NodeView(labels=dict(cfg.labels))
        self.exit_code = 0
        self.stopped = asyncio.Event()
        self.draining = False
        self._side: dict[str, asyncio.Task[None]] = {}
        self.supervisor = Supervisor(on_fatal=self._task_failed)
        # Restartable: a puller holds no job (what it fetched was spawned; JetStream redelivers
        # a message nobody acks).
        self.pullers = PullerSet(self._make_puller, cfg.fetch_timeout, self.supervisor, RESTART)
        self._jobs: set[asyncio.Task[None]] = set()
        self._backend: Backend | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.disk = DiskGuard(cfg.work_dir, self._disk_limits)
        self.now = now
        #: The processing windows in force, and whether an operator set them at run time.
        self.windows = Windows(cfg.windows)
        self.windows_override: list[WindowRule] | None = None
        self._windows_lock = asyncio.Lock()  # what is on disk is what is in force

    # -- state --------------------------------------------------------------------------
    @property
    def state(self) -> NodeState:
        return "draining" if self.draining else "online"

    @property
    def backend(self) -> Backend:
        assert self._backend is not None, "daemon not started"
        return self._backend

    # -- start --------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.cfg
        self._backend = b = await open_backend(
            cfg, self.subjects, on_closed=self._nats_closed, caps=self._caps
        )
        self.node.verified_encoders = set(b.caps.verified_encoders)
        self.node.filters = set(b.caps.verified_filters)
        self.node.max_gpu_memory_mb = max(
            (g.memory_total_bytes // (1 << 20) for g in b.caps.gpus), default=0
        )
        self.apply_pools(cfg)
        self.windows_override = await load_override(Path(cfg.state_dir))
        if self.windows_override is not None:
            self.windows = Windows(self.windows_override)
            log.info("windows set at run time are in force (not the config file's)")
        reporter = Reporter(b.raw_journal, b.outbox, cfg.node_id)
        self.health = EncoderHealthTracker(
            self.node, reporter, cfg.encoder_failure_threshold, cfg.encoder_reverify_interval
        )
        self.deps = JobDeps(
            cfg,
            reporter,
            self.running,
            self.node,
            new_context=b.new_context,
            run_operation=self._run_operation,
            on_finished=self._job_finished,
            encoder_health=self.health,
            on_slow=lambda pool: self.metrics.soft_timeouts.labels(pool=pool).inc(),
            supervisor=self.supervisor,
            watcher_policy=RESTART,  # its state is the job's handle, which outlives a crash
            failures=FailureCounts(b.js, self.subjects),
            ask_ended=EndQuery(b.nc, self.subjects, cfg.node_id),
        )
        sources = HeartbeatSources(
            self.slots,
            self.running,
            lambda: self.state,
            b.outbox_depth,
            b.gpu_loads,
            lambda: sorted(self.node.withdrawn_encoders),
            str(cfg.work_dir),
            lambda: self.disk.low,
            self.window_report,
        )
        self.advertiser = Advertiser(
            b.js, self.subjects, reporter, b.caps, sources, cfg.heartbeat_interval
        )
        if await self.disk.check():  # a node that starts with a full disk never pulls
            await self.disk_changed()
        # Not a task: nats-py runs its callback, which answers even a bug (control_listener.py).
        self.control = ControlListener(b.nc, self.subjects, cfg.node_id, self)
        await self.control.start()
        # Fatal: queued commits die with the committer, and their callers wait on them for ever.
        if b.raw_journal.commit_task is not None:
            self.supervisor.adopt("journal-commit", b.raw_journal.commit_task, self.stopped)
        # Restartable: unmarked rows are sent again and deduplicated by their event id.
        b.outbox.start(self.supervisor, RESTART)
        try:
            await self.advertiser.beat()
        except Exception as exc:  # NATS away at start: the loop retries
            log.warning("first heartbeat failed: %s", exc)
        # Restartable: each beat, gauge, check and prune stands alone.
        self._watch("heartbeat", self.advertiser.run)
        self._watch("gauges", lambda: gauges(self.metrics, self.slots, b))
        self._watch("encoder-health", lambda: self.health.run(b.reverify))
        self._watch("prune", lambda: prune(b, cfg.journal_retention_days))
        self._watch("disk", lambda: self.disk.run(cfg.disk_check_interval, self.disk_changed))
        # Fatal: it vouches for the whole daemon to systemd, which would kill us without it
        # anyway (at WatchdogSec); stop now, handing jobs back, instead. A return is fine
        # (there is no watchdog outside systemd).
        alive = lambda: not self.stopped.is_set()  # noqa: E731
        self._watch("watchdog", lambda: watchdog_task(self.notifier, alive), FATAL)
        if cfg.metrics_port:
            await self.metrics.serve(cfg.metrics_host, cfg.metrics_port, self.problems)
        # The last run's interrupted attempts go back to JetStream now, not after ack_wait.
        await hand_back_interrupted(b.raw_journal, b.nc, cfg.ack_wait)
        # Ended before the last stop took their ack: ack them now, not rerun them elsewhere.
        await settle_unsettled_ends(b.raw_journal, b.outbox, b.nc, cfg.ack_wait)
        await self.start_pullers()
        self.notifier.ready(self.status_line())
        log.info("pulling pools %s with slots %s", self.node.pools, self.slots.free_all())

    def problems(self) -> list[str]:
        """Why the node takes no new jobs now (/readyz): none while it serves its pools."""
        found = []
        if self.stopped.is_set():
            found.append("stopping")
        elif self.draining:
            found.append("draining")
        if not self.backend.nc.is_connected:
            found.append("nats disconnected")
        if self.disk.low:
            found.append("disk low")
        return found

    def apply_pools(self, cfg: DaemonConfig) -> None:
        caps = self.backend.caps
        wanted = cfg.pools or caps.pools
        capacity = served_capacity(wanted, caps.slots, cfg.slots, cfg.pool_classes)
        self.node.pools, self.node.labels = list(capacity), dict(cfg.labels)
        self.slots.resize(capacity)

    def _bg(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _watch(
        self, name: str, run: Callable[[], Awaitable[None]], policy: Policy = RESTART
    ) -> None:
        supervised = self.supervisor.supervise(name, run, self.stopped, policy)
        self._side[name] = asyncio.create_task(supervised, name=name)

    def _task_failed(self, name: str, exc: BaseException) -> None:
        """A task crashed for good: stop with status 1 (`serve_daemon` stops what is left, so
        running jobs go back to JetStream) for systemd to restart the daemon."""
        if self.stopped.is_set():
            return
        log.error("%s died (%s): stopping with status 1", name, exc)
        self.exit_code = 1
        self.stopped.set()

    # -- pulling ------------------------------------------------------------------------
    def _make_puller(self, pool: str) -> PoolPuller:
        aged = self.metrics.aged_starts.labels(pool=pool)
        return PoolPuller(
            self.backend.js, self.subjects, pool, self.slots, self._spawn,
            fetch_timeout=self.cfg.fetch_timeout, wake_source=self.backend.nc,
            windows=lambda: self.windows, now=self.now, aging_every=self.cfg.aging_every,
            on_aged=aged.inc,
            on_share_start=lambda t: self.metrics.share_starts.labels(pool=pool, tenant=t).inc(),
        )  # fmt: skip

    # -- windows and aging --------------------------------------------------------------
    def apply_schedule(self, cfg: DaemonConfig) -> None:
        """Reload: the file's windows (unless an operator's are in force) and the aging bound."""
        if self.windows_override is None:
            self.windows = Windows(cfg.windows)
        elif cfg.windows != self.cfg.windows:
            log.warning(
                "the config file's windows changed, but those set at run time stay in force; "
                "`flotilla windows NODE --from-config` puts the file's back"
            )
        for pool in self.pullers.pools:
            if (puller := self.pullers.puller(pool)) is not None:
                puller.aging_every = cfg.aging_every
                puller.recheck()

    async def set_windows(self, rules: list[WindowRule] | None) -> str:
        """An operator's rules (None: back to the config file's): kept in the state dir first,
        so what is in force is what a restart finds; then applied at once."""
        windows = Windows(self.cfg.windows if rules is None else rules)
        async with self._windows_lock:
            await save_override(Path(self.cfg.state_dir), rules)
            self.windows, self.windows_override = windows, rules
        for pool in self.pullers.pools:
            if (puller := self.pullers.puller(pool)) is not None:
                puller.recheck()
        self._bg(self._beat(), "windows-beat")
        source = "the config file's" if rules is None else "set at run time"
        return f"{len(windows.rules)} window rule(s) in force, {source}"

    def window_report(self) -> tuple[list[WindowRule], str, dict[str, list[str]]]:
        """For the heartbeat: the rules in force, where from, and each pool's open tiers."""
        source = "config" if self.windows_override is None else "runtime"
        now = self.now()
        tiers = {p: self.windows.open_tiers(p, now) for p in self.node.pools}
        return self.windows.rules, source, tiers

    async def _beat(self) -> None:
        try:
            await self.advertiser.beat()
        except Exception as exc:  # NATS away: the next heartbeat carries it
            log.warning("heartbeat after a windows change failed: %s", exc)

    async def start_pullers(self) -> None:
        if self.disk.low:  # nothing new until space returns; running jobs go on
            await self.pullers.stop()
            return
        await self.pullers.sync({p: self.slots.capacity(p) for p in self.node.pools})

    def _disk_limits(self) -> tuple[int, float]:
        return self.cfg.disk_low_watermark_mb << 20, self.cfg.disk_low_watermark_percent

    async def disk_changed(self) -> None:
        """The disk guard's verdict flipped (or start-up): pullers, gauge, event, status."""
        self.metrics.disk_low.set(1 if self.disk.low else 0)
        await self._state_event(reason=self.disk.reason or "disk space back over the watermark")
        if not self.draining and self.pullers.started:
            await self.start_pullers()
        self.notifier.status(self.status_line())

    def _spawn(self, msg: Msg, pool: str, priority: str) -> None:
        task = asyncio.create_task(self._job(msg, pool, priority), name=f"job-{msg.subject}")
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _job(self, msg: Msg, pool: str, priority: str) -> None:
        self.metrics.jobs_running.inc()
        try:
            if msg.metadata.timestamp is not None:
                self.metrics.queue_wait.observe(
                    max(0.0, time.time() - msg.metadata.timestamp.timestamp())
                )
            await run_job(msg, pool, priority, self.deps)
        except Exception:
            log.exception("job %s crashed; JetStream will redeliver", msg.subject)
        finally:
            self.metrics.jobs_running.dec()
            self.slots.release(pool)
            self.notifier.status(self.status_line())

    def _job_finished(self, outcome: str, pool: str, wall: float, result: JobResult | None) -> None:
        count_job(self.metrics, outcome, pool, wall, result)

    # -- drain, resume, reload, stop ----------------------------------------------------
    def request_drain(self, deadline_s: float | None, reason: str) -> None:
        if self.draining:
            return
        self.draining = True
        log.info("draining: %s", reason)
        self.notifier.status(f"draining: {reason}")
        self._bg(self._drain(deadline_s), "drain")

    async def _drain(self, deadline_s: float | None) -> None:
        await self.pullers.stop()
        await self._state_event(reason="drain")
        deadline = self.cfg.drain_deadline if deadline_s is None else deadline_s
        await self.wait_jobs(deadline)

    def request_resume(self) -> None:
        if not self.draining or self.stopped.is_set():
            return
        self.draining = False
        self._bg(self.start_pullers(), "resume")
        self._bg(self._state_event(reason="resumed"), "resume-event")

    async def _state_event(self, reason: str) -> None:
        event = NodeStateChanged(
            event_id=new_event_id(),
            node_id=self.cfg.node_id,
            ts=time.time(),
            state=self.state,
            reason=reason,
        )
        await self.deps.reporter.record(None, None, event)

    async def wait_jobs(self, deadline: float) -> None:
        """Let running jobs finish up to `deadline`, then stop them (they are nak'd, not lost)."""
        if self._jobs:
            _, pending = await asyncio.wait(set(self._jobs), timeout=deadline)
            if pending:
                log.warning("drain deadline: stopping %d job(s) for redelivery", len(pending))
                self.running.stop_all(StopKind.DRAIN, "node draining")
                await asyncio.wait(pending, timeout=30.0)

    async def reload(self) -> None:
        """SIGHUP: labels, pools, slots, limits, NATS logins from the file (daemon.reload)."""
        await reload_daemon(self)

    async def stop(self, *, force: bool = False) -> None:
        """Idempotent. Drain (or, forced, stop jobs at once), flush events, close."""
        if self._stopping:
            if force:  # a second signal: the first stop() is waiting on these jobs
                self.running.stop_all(StopKind.SHUTDOWN, "forced stop")
            return
        self._stopping = True
        self.notifier.stopping("stopping")
        self.draining = True
        await self.pullers.stop()
        await self.wait_jobs(0.0 if force else self.cfg.drain_deadline)
        self.stopped.set()
        b = self.backend
        await b.outbox.flush(2.0 if force else 10.0)
        await b.outbox.stop()
        await self.control.stop()
        await self.advertiser.remove()
        for task in self._side.values():
            task.cancel()
        await asyncio.gather(*self._side.values(), return_exceptions=True)
        await self.metrics.close()
        await b.close()

    async def _nats_closed(self) -> None:
        if not self.stopped.is_set():
            log.error("NATS connection closed for good: exiting")
            self.exit_code = 2
            self.stopped.set()

    # -- status -------------------------------------------------------------------------
    def status_line(self) -> str:
        free = ", ".join(f"{p}={n}" for p, n in self.slots.free_all().items())
        held = f"; not pulling: {self.disk.reason}" if self.disk.low else ""
        return f"{self.state}: {len(self.running)} running; free {free}{held}"
