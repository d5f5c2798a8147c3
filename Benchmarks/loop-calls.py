#!/usr/bin/env python3
"""Calls per round trip of the runtime's costly entry points, from the callgrind
files that `Benchmarks/loop-instructions.sh` keeps (LOOP_KEEP=DIR).

Callgrind weighs a retain or release at about 20 instructions, but each is an
atomic read-modify-write (5-40 ns on this kind of VM), as a lock is; malloc and
free, clock reads and task allocations are also worth counting apart from
instructions. Each figure is (calls in the run of 3N frames - calls in the run
of N) / 2N, as loop-instructions.sh counts instructions.

    LOOP_KEEP=/tmp/cg LOOP_MODES="off on" Benchmarks/loop-instructions.sh 3000
    Benchmarks/loop-calls.py /tmp/cg --frames 3000
    # who makes the difference, by caller, between two runs (build-mode):
    Benchmarks/loop-calls.py /tmp/cg --frames 3000 --process zipper \\
        --callers 'swift_retain$' --diff new-off new-on
"""
import argparse
import collections
import glob
import os
import re

DEFAULT = (r"^(swift_retain|swift_release|swift_bridgeObjectRetain|swift_bridgeObjectRelease|malloc|free|"
           r"swift_allocObject|swift_task_alloc|pthread_mutex_lock|clock_gettime)(@.*)?$")


def read_calls(path):
    """{(caller, callee): calls} from a callgrind file (names compressed as `(id) name`)."""
    names, calls = {}, collections.Counter()
    caller = callee = None

    def name(tag, line):
        match = re.match(tag + r"=\((\d+)\)(?: (.*))?", line)
        if not match:
            return line[len(tag) + 1:].strip()
        ident, text = match.groups()
        if text:
            names[ident] = text.strip()
        return names.get(ident, ident)

    with open(path, errors="replace") as lines:
        for line in lines:
            if line.startswith("fn="):
                caller = name("fn", line)
            elif line.startswith("cfn="):
                callee = name("cfn", line)
            elif line.startswith("calls=") and callee is not None:
                calls[(caller, callee)] += int(line.split("=", 1)[1].split()[0])
                callee = None
    return calls


def short(symbol):
    # "???:name [/path/binary]" or "name" -> name
    symbol = re.sub(r"\s*\[.*\]$", "", symbol)
    return symbol.split(":", 1)[1] if symbol.startswith("???:") else symbol


def per_round_trip(directory, run, frames):
    one = read_calls(os.path.join(directory, run + ".callgrind.1"))
    three = read_calls(os.path.join(directory, run + ".callgrind.2"))
    return {key: (three[key] - one[key]) / (2 * frames) for key in set(one) | set(three)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory")
    parser.add_argument("--frames", type=int, required=True, help="the N given to loop-instructions.sh")
    parser.add_argument("--process", help="zipper, function or bench (default: all kept)")
    parser.add_argument("--functions", default=DEFAULT, help="regex of callees to count")
    parser.add_argument("--callers", help="regex of a callee: list its callers instead")
    parser.add_argument("--diff", nargs=2, metavar=("RUN_A", "RUN_B"), help="build-mode pair, e.g. new-off new-on")
    arguments = parser.parse_args()

    runs = sorted({os.path.basename(path)[:-len(".callgrind.1")]
                   for path in glob.glob(os.path.join(arguments.directory, "*.callgrind.1"))})
    if arguments.process:
        runs = [run for run in runs if run.endswith("-" + arguments.process)]
    if not runs:
        raise SystemExit(f"no kept callgrind runs in {arguments.directory}")
    pattern = re.compile(arguments.callers or arguments.functions)
    processes = sorted({run.rsplit("-", 1)[1] for run in runs})
    for process in processes:
        columns = [run for run in runs if run.endswith("-" + process)]
        if arguments.diff:
            columns = [f"{arguments.diff[0]}-{process}", f"{arguments.diff[1]}-{process}"]
        counts = {}
        for run in columns:
            totals = collections.Counter()
            for (caller, callee), value in per_round_trip(arguments.directory, run, arguments.frames).items():
                if pattern.search(short(callee)):
                    totals[short(caller) if arguments.callers else short(callee)] += value
            counts[run] = totals
        keys = sorted(set().union(*counts.values()))
        if arguments.diff:
            a, b = columns
            rows = sorted(((counts[b][k] - counts[a][k], k) for k in keys), reverse=True)
            print(f"== {process}: calls per round trip, {b} minus {a}")
            for value, key in rows:
                if abs(value) >= 0.3:
                    print(f"{value:8.2f}  {key[:150]}")
            continue
        print(f"== {process}: calls per round trip")
        print(f"{'':40}" + "".join(f"{run.rsplit('-', 1)[0]:>14}" for run in columns))
        for key in keys:
            if any(abs(counts[run][key]) >= 0.3 for run in columns):
                print(f"{key[:40]:40}" + "".join(f"{counts[run][key]:14.1f}" for run in columns))


if __name__ == "__main__":
    main()
