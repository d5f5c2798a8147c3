#!/usr/bin/env python3
"""The zipper's routing pass per hop, read from its system calls.

On the latency-bound loop (one frame in flight) a hop through the zipper runs:
the packet is read (recvmsg), the frame's task runs on the loop thread (decode,
route, queue the write, end the span), the loop polls once more (epoll_pwait2
returning 0 at once), and its flush sends the frame (sendmsg). The routing
pass is the time from the system call before that poll to the poll: the
task's run, with no system call in it, so tracepoints see its length to the
microsecond without a probe in the code. Flush to send: from the poll's
return to the sendmsg.

  zipper-hop.py passes PERF_SCRIPT_OUTPUT   # "routing_us flush_us hops" (means of the middle 80 %)
  zipper-hop.py summary RESULTS             # lines "<round> <mode> <routing_us> <flush_us> <hops>"
  zipper-hop.py --self-test                 # the parser against a made-up trace (scripts/test.sh)

PERF_SCRIPT_OUTPUT is `perf script -F tid,time,event,trace` of
`perf record -e raw_syscalls:sys_enter,raw_syscalls:sys_exit -p <zipper>`.
"""

import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
loop_pool = __import__("loop-pool")

EPOLL_PWAIT2, SENDMSG = 441, 46
EVENT = re.compile(r"\s*(\d+)\s+([\d.]+):\s+raw_syscalls:sys_(enter|exit): NR (\d+)(?: = (-?\d+))?")


def hop_times(lines) -> list[tuple[float, float]]:
    """(routing pass, flush to send) in µs for each frame-carrying send after a poll that found work queued."""
    events = []
    for line in lines:
        match = EVENT.match(line)
        if match:
            tid, time, kind, number, result = match.groups()
            events.append((tid, float(time), kind, int(number), int(result) if result is not None else None))
    hops = []
    for i in range(1, len(events) - 3):
        before, poll, polled, send, sent = events[i - 1 : i + 4]
        if len({before[0], poll[0], polled[0], send[0], sent[0]}) != 1:
            continue
        # A frame of 16 bytes with its metadata is over 60 bytes; acknowledgements are under.
        if (before[2] == "exit" and poll[2:4] == ("enter", EPOLL_PWAIT2) and polled[2] == "exit" and polled[4] == 0
                and send[2:4] == ("enter", SENDMSG) and sent[4] is not None and sent[4] > 60):
            hops.append(((poll[1] - before[1]) * 1e6, (send[1] - polled[1]) * 1e6))
    return hops


def middle_mean(values: list[float]) -> float:
    values = sorted(values)
    return statistics.mean(values[len(values) // 10 : len(values) * 9 // 10])


def passes(path: str) -> int:
    with open(path) as lines:
        hops = hop_times(lines)
    if len(hops) < 10:
        print("0 0 0")
        return 1
    print(f"{middle_mean([r for r, _ in hops]):.2f} {middle_mean([f for _, f in hops]):.2f} {len(hops)}")
    return 0


def summary(path: str) -> int:
    rounds: dict[str, dict[str, float]] = {}
    modes: list[str] = []
    for line in open(path):
        fields = line.split()
        # A round whose trace held no hops (see `passes`) is left out.
        if len(fields) != 5 or fields[4] == "0":
            continue
        round_, mode, routing = fields[0], fields[1], float(fields[2])
        rounds.setdefault(round_, {})[mode] = routing
        if mode not in modes:
            modes.append(mode)
    first = modes[0]
    print(f"routing pass per hop, µs (mean of the middle 80 % of a round's hops), {len(rounds)} rounds")
    print(f"{'mode':<20} {'median':>8}   paired difference to {first} (median, 95 % interval)")
    for mode in modes:
        values = [r[mode] for r in rounds.values() if mode in r]
        line = f"{mode:<20} {statistics.median(values):8.2f}"
        if mode != first:
            differences = [r[mode] - r[first] for r in rounds.values() if mode in r and first in r]
            interval = loop_pool.median_interval(differences)
            span = f"[{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else "(too few rounds for an interval)"
            line += f"   {statistics.median(differences):+.2f} {span}"
        print(line)
    return 0


def self_test() -> int:
    def trace(tid: int, start: float, steps: list[tuple[str, int, int | None, float]]) -> list[str]:
        lines, time = [], start
        for kind, number, result, after in steps:
            time += after / 1e6
            end = f" = {result}" if kind == "exit" else " (6, 0, 0, 0, 0, 0)"
            lines.append(f" {tid} {time:.6f}: raw_syscalls:sys_{kind}: NR {number}{end}")
        return lines
    # A frame read (recvmsg 289 bytes), its ACK sent, 7 µs of routing, the poll, 2 µs, the frame sent.
    hop = [("enter", 47, None, 0), ("exit", 47, 289, 2), ("enter", 46, None, 3), ("exit", 46, 42, 4),
           ("enter", EPOLL_PWAIT2, None, 7), ("exit", EPOLL_PWAIT2, 0, 1), ("enter", SENDMSG, None, 2), ("exit", SENDMSG, 289, 5)]
    # The same, but only an acknowledgement goes out after the poll: not a hop.
    ack = hop[:-1] + [("exit", SENDMSG, 42, 5)]
    lines = trace(7, 100.0, hop) + trace(7, 101.0, ack) + trace(7, 102.0, hop)
    # The system call before the poll is another thread's: not this thread's routing pass.
    broken = trace(7, 103.0, hop)
    broken[3] = broken[3].replace(" 7 ", " 8 ", 1)
    hops = hop_times(lines + broken)
    expected = [(7.0, 2.0), (7.0, 2.0)]
    ok = len(hops) == len(expected) and all(abs(a - c) < 0.01 and abs(b - d) < 0.01 for (a, b), (c, d) in zip(hops, expected))
    print("zipper-hop.py self-test:", "passed" if ok else f"failed: {hops}")
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        sys.exit(self_test())
    if len(sys.argv) == 3 and sys.argv[1] == "passes":
        sys.exit(passes(sys.argv[2]))
    if len(sys.argv) == 3 and sys.argv[1] == "summary":
        sys.exit(summary(sys.argv[2]))
    print(__doc__)
    sys.exit(2)
