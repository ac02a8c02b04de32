"""What unauthenticated ZeroMQ peers cost the scorer's memory: a real scorer process on
loopback with no token (the default, NULL handshake), its RSS read from /proc before, during
and after each attack, each attack against a fresh scorer.

The peers are raw TCP sockets speaking ZMTP 3 by hand, so that they can stop where a libzmq
peer never would: in the middle of a handshake command, or in the middle of a multipart
message (libzmq delivers a multipart message only once all its frames arrived, and holds
what arrived until then).

`python -m bench.intake_memory [--toy] [--libzmq-defaults]` prints a table (MB = 10^6 bytes);
--libzmq-defaults runs the scorer with libzmq's own handshake interval (30 s) and no
heartbeats, as the scorer had before it set them (the figures before).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import json
import socket
import struct
import sys
import tempfile
import termios
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from common.wire.protocol import FRAME_BYTES, PROTOCOL_VERSION
from delta_loss_devtools.scorer_process import ScorerProcess, memory_bytes
from delta_loss_devtools.waiting import wait_until

MB = 1e6
# Runs `python -m scorer_svc ...` (its argv after this) with the intake's handshake interval
# and heartbeats at libzmq's defaults.
LIBZMQ_DEFAULTS = """
import runpy, sys
import scorer_svc.intake.server as intake
intake.HANDSHAKE_SECONDS, intake.HEARTBEAT_SECONDS, intake.HEARTBEAT_TIMEOUT_SECONDS = 30, 0, 0
sys.argv = sys.argv[3:]
runpy.run_module("scorer_svc", run_name="__main__", alter_sys=True)
"""


# ZMTP 3.0 by hand (rfc.zeromq.org/spec/23): a greeting, then frames of a flags byte and a
# size (1 byte, or 8 with the LONG flag).
MORE, LONG, COMMAND = 1, 2, 4


def greeting(mechanism: bytes = b"NULL") -> bytes:
    return b"\xff" + bytes(8) + b"\x7f" + bytes([3, 0]) + mechanism.ljust(20, b"\0") + bytes(32)


def frame_head(size: int, flags: int = 0) -> bytes:
    if size > 255:
        return bytes([flags | LONG]) + struct.pack(">Q", size)
    return bytes([flags, size])


def frame(body: bytes, flags: int = 0) -> bytes:
    return frame_head(len(body), flags) + body


def ready_command() -> bytes:
    """The NULL handshake's READY command of a DEALER."""
    name, value = b"Socket-Type", b"DEALER"
    body = b"\x05READY" + bytes([len(name)]) + name + struct.pack(">I", len(value)) + value
    return frame(body, COMMAND)


def raw_peer(url: str) -> socket.socket:
    """A TCP connection to url that has sent the NULL greeting."""
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    peer = socket.create_connection((host, int(port)))
    peer.sendall(greeting())
    return peer


def _read_exactly(peer: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        got = peer.recv(n - len(data))
        if not got:
            raise ConnectionError("the scorer closed the connection in the handshake")
        data += got
    return data


def handshaken_peer(url: str) -> socket.socket:
    """A peer through the NULL handshake: READY sent, and the scorer's READY read (frames
    sent before it would be taken for handshake commands)."""
    peer = raw_peer(url)
    peer.sendall(ready_command())
    _read_exactly(peer, 64)  # the scorer's greeting
    flags, size = _read_exactly(peer, 2)
    if flags & LONG:
        size = struct.unpack(">Q", bytes([size]) + _read_exactly(peer, 7))[0]
    _read_exactly(peer, size)  # its READY
    return peer


def half_open_handshake(url: str, declared: int = FRAME_BYTES) -> socket.socket:
    """A peer whose handshake never ends: a command frame declaring `declared` bytes, all but
    the last of them sent."""
    peer = raw_peer(url)
    peer.sendall(frame_head(declared, COMMAND | LONG))
    send_zeros(peer, declared - 1)
    return peer


def send_zeros(peer: socket.socket, n: int) -> None:
    block = bytes(min(n, 1 << 20))
    while n > 0:
        n -= peer.send(memoryview(block)[: min(n, len(block))])


def unfinished_message(url: str, frames: int, size: int) -> socket.socket:
    """A peer through the handshake that sends `frames` frames of `size` bytes of one
    multipart message, each with MORE set, and never its last frame."""
    peer = handshaken_peer(url)
    head = frame_head(size, MORE)
    for _ in range(frames):
        peer.sendall(head)
        send_zeros(peer, size)
    return peer


def closed_by_scorer(peer: socket.socket, timeout: float) -> float | None:
    """Seconds until the scorer closed the connection (None: still open after timeout)."""
    started = time.monotonic()
    peer.settimeout(timeout)
    try:
        while peer.recv(1 << 16):
            if time.monotonic() - started > timeout:
                return None
    except TimeoutError:
        return None
    except OSError:  # reset
        pass
    return time.monotonic() - started


def hello_answered(url: str, timeout_ms: int = 30_000) -> dict:
    """An incomplete hello from a real DEALER: the intake still answers (a refusal)."""
    dealer: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(url)
    try:
        dealer.send(json.dumps({"protocol": PROTOCOL_VERSION, "type": "hello"}).encode())
        if not dealer.poll(timeout_ms):
            raise TimeoutError(f"the intake at {url} did not answer a hello")
        return json.loads(dealer.recv())
    finally:
        dealer.close(0)


def complete_message(url: str, frames: int, size: int) -> dict:
    """One multipart message of a header and `frames` frames of `size` bytes, sent whole by
    a DEALER; the scorer's reply (a refusal: a checkpoint header is one frame)."""
    dealer: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(url)
    header = json.dumps({"protocol": PROTOCOL_VERSION, "type": "checkpoint"}).encode()
    try:
        dealer.send_multipart([header, *[bytes(size)] * frames], copy=False)
        if not dealer.poll(300_000):
            raise TimeoutError("no reply to the multipart message")
        return json.loads(dealer.recv())
    finally:
        dealer.close(0)


def _unsent(peer: socket.socket) -> int:
    """Bytes of peer's not yet taken by the other end's kernel (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(peer.fileno(), termios.TIOCOUTQ, bytes(4)))[0]


def _all_sent(peer: socket.socket) -> bool:
    return _unsent(peer) == 0


def _pid(scorer: ScorerProcess) -> int:
    assert scorer.proc is not None, "the scorer is started"
    return scorer.proc.pid


def _rss_mb(scorer: ScorerProcess) -> float:
    return memory_bytes(_pid(scorer)) / MB


def _attack(
    work: Path,
    name: str,
    run: Callable[[ScorerProcess], dict],
    wait_close: float,
    prefix: list[str],
) -> dict:
    """One attack against a fresh scorer: RSS before, while the attack's peers are held,
    and after they are gone (the scorer still answers a hello)."""
    scorer = ScorerProcess(work / name, prefix=prefix).start()
    try:
        hello_answered(scorer.zmq_url)  # the intake's first request is behind it
        before = _rss_mb(scorer)
        result = run(scorer)
        for peer in result.get("peers", []):  # what the peers sent reached the scorer
            wait_until(functools.partial(_all_sent, peer), "the peer's bytes sent", scorer,
                       timeout=60)  # fmt: skip
        held = result.pop("held", None)
        peers = result.pop("peers", [])
        dropped = result.pop("dropped", [])
        if dropped:
            result["closed"] = "at once (the frame's size was refused)"
        during = _rss_mb(scorer)
        closed = [closed_by_scorer(p, wait_close) for p in peers]
        for peer in peers + dropped:
            peer.close()
        answered = hello_answered(scorer.zmq_url)["code"] == "malformed"
        after = _rss_mb(scorer)
        return {
            "attack": name,
            "before_mb": before,
            "during_mb": (held if held is not None else during) - before,
            "after_mb": after - before,
            "peak_mb": (memory_bytes(_pid(scorer), "VmHWM") / MB) - before,
            "closed_s": max((c for c in closed if c is not None), default=None)
            if closed and all(c is not None for c in closed)
            else None,
            "still_answers": answered,
            **result,
        }
    finally:
        scorer.stop()


def measure(work: Path, toy: bool = False, libzmq_defaults: bool = False) -> list[dict]:
    """toy: a few MB per attack, not a measurement; libzmq_defaults: the scorer as before it
    set its handshake interval and heartbeats."""
    prefix = [sys.executable, "-c", LIBZMQ_DEFAULTS] if libzmq_defaults else []
    frames, size = (2, 1 << 20) if toy else (40, FRAME_BYTES)
    n_half = 3 if toy else 30
    n_empty = 10_000 if toy else 1_000_000
    wait_close = 60.0

    def whole(scorer: ScorerProcess) -> dict:
        return {"reply": complete_message(scorer.zmq_url, frames, size)["code"]}

    def unfinished(scorer: ScorerProcess) -> dict:
        return {"peers": [unfinished_message(scorer.zmq_url, frames, size)]}

    def empty_frames(scorer: ScorerProcess) -> dict:
        return {"peers": [unfinished_message(scorer.zmq_url, n_empty, 0)]}

    def half_open(scorer: ScorerProcess) -> dict:
        return {"peers": [half_open_handshake(scorer.zmq_url) for _ in range(n_half)]}

    def oversized(scorer: ScorerProcess) -> dict:
        peer = handshaken_peer(scorer.zmq_url)
        peer.sendall(frame_head(4 * FRAME_BYTES))
        with contextlib.suppress(OSError):  # dropped while sending
            send_zeros(peer, 4 * FRAME_BYTES)
        return {"peers": [], "dropped": [peer]}

    attacks = [
        (f"{frames} x {size >> 20} MiB frames in one message, sent whole", whole),
        (f"{frames} x {size >> 20} MiB frames in one message, last frame never sent", unfinished),
        (f"{n_empty:,} empty frames in one message, last never sent", empty_frames),
        (f"{n_half} half-open handshakes, {FRAME_BYTES >> 20} MiB command each", half_open),
        (f"one {4 * FRAME_BYTES >> 20} MiB frame (over MAXMSGSIZE)", oversized),
    ]
    return [_attack(work, f"a{i}", run, wait_close, prefix) | {"attack": name}
            for i, (name, run) in enumerate(attacks)]  # fmt: skip


def render(rows: list[dict]) -> list[str]:
    lines = [
        "| attack | RSS growth while held (MB) | peak (MB) | after the peers are gone (MB) "
        "| scorer closed the peers after | intake still answers |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if "closed" in r:
            closed = r["closed"]
        elif "reply" in r:
            closed = f"answered ({r['reply']})"
        else:
            closed = f"{r['closed_s']:.1f} s" if r["closed_s"] is not None else "not in 60 s"
        lines.append(
            f"| {r['attack']} | {r['during_mb']:.0f} | {r['peak_mb']:.0f} | {r['after_mb']:.0f} "
            f"| {closed} | {'yes' if r['still_answers'] else 'NO'} |"
        )
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", action="store_true", help="tiny attacks: a check that it runs")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--libzmq-defaults", action="store_true", help="the scorer as before")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(Path(tmp), toy=args.toy, libzmq_defaults=args.libzmq_defaults)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print("\n".join(render(rows)))
