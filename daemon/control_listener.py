"""Requests to this node over NATS: drain, resume, cancel, pause, unpause, status, windows.

Subscribes to `<prefix>.ctl.<node_id>.*` and `<prefix>.ctl.all.*` (a broadcast cancel for a job
id reaches whichever node runs it). Every request gets a `NodeCommandReply`; a malformed one gets
`ok=false` with the decode error, never a crash.

A job is named by (tenant, job_id). A command with a tenant acts on that job alone; one without
(a control plane older than the field) acts on the job of that id if only one tenant's runs here,
and is refused, asking for the tenant, when several do: it must not stop the wrong one.

`windows` replaces the processing windows in force (its rules are checked as they are decoded);
it is answered once they are kept in the state dir and applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from common.natsconn import sync_subscriptions
from daemon.job.handle import JobHandle
from daemon.job.running import RunningJobs
from schemas.codec import DecodeError, Decoder, encode
from schemas.control_msgs import NodeCommand, NodeCommandReply
from schemas.subjects import ALL_NODES, Subjects
from schemas.windows import WindowRule

log = logging.getLogger("flotilla.control")
_DECODER: Decoder[NodeCommand] = Decoder(NodeCommand)


class NodeControl(Protocol):
    """What the daemon exposes to the listener (implemented by `daemon.app.Daemon`)."""

    running: RunningJobs

    @property
    def state(self) -> str: ...

    def request_drain(self, deadline_s: float | None, reason: str) -> None: ...

    def request_resume(self) -> None: ...

    async def set_windows(self, rules: list[WindowRule] | None) -> str: ...


class ControlListener:
    def __init__(self, nc: Client, subjects: Subjects, node_id: str, node: NodeControl) -> None:
        self.nc, self.subjects, self.node_id, self.node = nc, subjects, node_id, node
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        for target in (self.node_id, ALL_NODES):
            subject = self.subjects.ctl(target, "*")
            self._subs.append(await self.nc.subscribe(subject, cb=self._on_msg))
        await sync_subscriptions(self.nc)  # a drain sent right after start must find us

    async def stop(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # connection already closed
                log.debug("unsubscribe: %s", exc)

    async def _on_msg(self, msg: Msg) -> None:
        # Not a task of ours: nats-py runs this per message and survives its exceptions, so the
        # listener cannot die; a bug still gets its traceback logged and the requester a reply.
        broadcast = msg.subject.split(".")[-2] == ALL_NODES
        concerns = False
        try:
            cmd = _DECODER.decode(msg.data)
            if cmd.verb == "windows":
                reply = await self._windows(cmd, broadcast)
            else:
                reply = self.handle(cmd)
            # An ambiguous job id concerns this node: the requester must hear why it was refused.
            concerns = reply.ok or self._ambiguous(cmd)
        except DecodeError as exc:
            reply = self._reply(False, str(exc)[:512])
        except Exception as exc:
            log.exception("control request on %s failed", msg.subject)
            reply = self._reply(False, f"internal error: {type(exc).__name__}")
        if broadcast and not concerns:
            return  # a broadcast is answered only by the nodes it concerns
        if msg.reply:
            await self.nc.publish(msg.reply, encode(reply))

    def handle(self, cmd: NodeCommand) -> NodeCommandReply:
        handlers: dict[str, Callable[[], tuple[bool, str]]] = {
            "drain": lambda: self._drain(cmd),
            "resume": self._resume,
            "cancel": lambda: self._with_job(cmd, lambda h: h.cancel(cmd.reason)),
            "pause": lambda: self._with_job(cmd, lambda h: h.pause()),
            "unpause": lambda: self._with_job(cmd, lambda h: h.resume()),
            "status": lambda: (True, ""),
            "windows": lambda: (False, "windows is handled by _windows"),
        }
        ok, message = handlers[cmd.verb]()
        log.info("control %s: ok=%s %s", cmd.verb, ok, message)
        return self._reply(ok, message)

    async def _windows(self, cmd: NodeCommand, broadcast: bool) -> NodeCommandReply:
        if broadcast:  # each node's rules are its own: set them node by node
            return self._reply(False, "windows is not taken as a broadcast: name the node")
        message = await self.node.set_windows(cmd.windows)
        log.info("control windows: %s", message)
        return self._reply(True, message)

    def _drain(self, cmd: NodeCommand) -> tuple[bool, str]:
        self.node.request_drain(cmd.deadline_s, cmd.reason or "drain requested")
        return True, "draining"

    def _resume(self) -> tuple[bool, str]:
        self.node.request_resume()
        return True, "resumed"

    def _with_job(self, cmd: NodeCommand, act: Callable[[JobHandle], None]) -> tuple[bool, str]:
        if cmd.job_id is None:
            return False, f"{cmd.verb} needs job_id"
        found = self.node.running.matching(cmd.job_id, cmd.tenant)
        if not found:
            whose = "" if cmd.tenant is None else f" of tenant {cmd.tenant}"
            return False, f"job {cmd.job_id}{whose} is not running here"
        if len(found) > 1:
            tenants = ", ".join(h.tenant for h in found)
            return False, (
                f"job id {cmd.job_id} runs here for several tenants ({tenants}): "
                f"name the tenant to {cmd.verb} one"
            )[:512]
        act(found[0])
        return True, f"{cmd.verb} {found[0].tenant}/{cmd.job_id}"

    def _ambiguous(self, cmd: NodeCommand) -> bool:
        jobs = self.node.running
        return cmd.job_id is not None and cmd.tenant is None and len(jobs.matching(cmd.job_id)) > 1

    def _reply(self, ok: bool, message: str) -> NodeCommandReply:
        return NodeCommandReply(
            ok=ok,
            node_id=self.node_id,
            message=message,
            running_jobs=self.node.running.ids(),
            state=self.node.state,
        )
