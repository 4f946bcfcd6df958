"""Micro-benchmark of the inbound frame reader (hubbub.ws.frames.FrameReader), in-process, no sockets.

    .venv/bin/python bench/micro_frames.py            # every case, best of 5
    .venv/bin/python bench/micro_frames.py --repeat 9

The whole-read cases are the hot path (a client's commands, each arriving in one read); the split
cases are what a slow link or a hostile client makes of the same bytes. Figures are the best of
`--repeat` runs of CPU time (time.process_time), so a busy machine inflates them less than wall time.
"""

from __future__ import annotations

import argparse
import os
import struct
import time
from collections.abc import Callable

from hubbub.ws import frames

MAX_SIZE = 2 * 1024 * 1024


def client_frame(payload: bytes, opcode: int = frames.TEXT) -> bytes:
    """A final, masked client frame, as a browser sends it."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    return head + key + frames.unmask(payload, key)


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def feeding(reads: list[bytes], times: int) -> Callable[[], int]:
    """A run: a fresh reader fed `reads` in order, `times` over; returns the messages read."""

    def run() -> int:
        count = 0
        for _ in range(times):
            reader = frames.FrameReader(MAX_SIZE)
            for data in reads:
                count += len(reader.feed(data))
        return count

    return run


COMMAND = b'{"id":12345,"op":"publish","room":"chat:lobby","data":{"text":"hello, world"}}'


def cases() -> dict[str, tuple[Callable[[], int], int]]:
    """name -> (run, operations per run)."""
    one = client_frame(COMMAND)
    batch = one * 32
    big = client_frame(b"x" * 65536)
    huge = client_frame(b"y" * (1024 * 1024))
    stream = b"".join(client_frame(COMMAND + b" " * (i % 50)) for i in range(2000))
    return {
        "one command per read": (feeding([one] * 1000, 20), 20_000),
        "32 commands per read": (feeding([batch] * 100, 20), 20 * 100 * 32),
        "64 KiB frame, one read": (feeding([big], 200), 200),
        "1 MiB frame, 64 KiB reads": (feeding(pieces(huge, 65536), 10), 10),
        "2000 commands, 4 KiB reads": (feeding(pieces(stream, 4096), 10), 10 * 2000),
        "64 KiB frame, 1-byte reads": (feeding(pieces(big, 1), 1), 1),
        "1 MiB frame, 4-byte reads": (feeding(pieces(huge, 4), 1), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for name, (run, ops) in cases().items():
        best = float("inf")
        for _ in range(args.repeat):
            start = time.process_time()
            run()
            best = min(best, time.process_time() - start)
        print(f"{name:32} {best * 1e6 / ops:12.3f} µs per message   ({best * 1e3:8.1f} ms per run)")


if __name__ == "__main__":
    main()
