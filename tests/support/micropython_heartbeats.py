"""A stand-in for dvrlinkd's supervisor heartbeats, as a process of its own: it opens the
supervisor's serial port and sends a heartbeat every ``--interval-ms``, with the daemon's codec
(dvrlink.protocol.supervisor_wire), and prints each reply it decodes as a line. The tests stop it
with SIGSTOP (a hung daemon) and let it go on with SIGCONT.

    python tests/support/micropython_heartbeats.py /dev/pts/7 --interval-ms 200
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import time
import tty

from dvrlink.protocol import supervisor_wire as wire


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port")
    parser.add_argument("--interval-ms", type=int, default=1000)
    args = parser.parse_args()
    fd = os.open(args.port, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    decoder = wire.FrameDecoder()
    seq = 0
    next_beat = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= next_beat:
            seq = (seq + 1) % 256
            os.write(fd, wire.heartbeat(seq, wire.Health.OK, int(time.time())))
            next_beat = max(next_beat + args.interval_ms / 1000, now)
        ready, _, _ = select.select([fd], [], [], max(0.0, next_beat - time.monotonic()))
        if ready:
            for frame in decoder.feed(os.read(fd, 4096), time.monotonic() * 1000):
                print(repr(wire.parse_reply(frame)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
