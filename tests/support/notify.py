"""Reading sd_notify datagrams with the sender's pid, as systemd does."""

from __future__ import annotations

import socket
import struct


def recv_with_pid(sock: socket.socket) -> tuple[list[str], int]:
    data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = next(
        struct.unpack("3i", cdata[:12])[0]
        for level, kind, cdata in ancdata
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
    )
    return data.decode().split("\n"), pid
