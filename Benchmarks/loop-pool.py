#!/usr/bin/env python3
"""Pools several runs of Benchmarks/loop-tracing.sh (their saved output).

On a shared VM single rounds of one mode spread by up to 35 %, and a run of 7
rounds can land 0.1 away from the next; ratios of a few percent need tens of
rounds. This reads the "round N MODE: …" lines of every file given and prints,
per mode, over all rounds: the median against the median of the same build's
off (`base:off` for `base:` modes, `alt:off` for `alt:` modes, else `off`),
and the median of each round's own ratio to that round's off. Where a mode
also ran as `base:MODE` (or `alt:MODE`), it then prints the median of each
round's ratio of the two builds in that mode: the before/after that the VM's
drift between rounds does not move.

    Benchmarks/loop-tracing.sh 7 30000 | tee run1.txt   # and run2.txt, …
    Benchmarks/loop-pool.py run1.txt run2.txt run3.txt
"""
import re
import statistics
import sys

ROUND = re.compile(r"round (\d+) (\S+): (\d+) frames/s, ([\d.]+) µs CPU per frame, p50 (\d+) µs")
FIELDS = ("frames/s", "CPU µs/frame", "p50 µs")


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    rounds: dict[tuple[int, str], dict[str, tuple[float, float, float]]] = {}
    order: list[str] = []
    for index, path in enumerate(paths):
        with open(path, encoding="utf-8") as file:
            for line in file:
                match = ROUND.match(line)
                if not match:
                    continue
                number, mode, rate, cpu, p50 = match.groups()
                rounds.setdefault((index, number), {})[mode] = (float(rate), float(cpu), float(p50))
                if mode not in order:
                    order.append(mode)
    if not rounds:
        print("no `round N MODE: …` lines in " + ", ".join(paths), file=sys.stderr)
        return 1
    print(f"{len(rounds)} rounds from {len(paths)} runs")
    print(f"{'mode':24s} " + " ".join(f"{name:>22s}" for name in FIELDS))
    print(f"{'':24s} " + " ".join(f"{'median (to off)':>22s}" for _ in FIELDS))
    for mode in order:
        reference = (mode.split(":", 1)[0] + ":off") if ":" in mode else "off"
        cells = []
        for field in range(3):
            values = [r[mode][field] for r in rounds.values() if mode in r]
            base = [r[reference][field] for r in rounds.values() if reference in r]
            paired = [r[mode][field] / r[reference][field] for r in rounds.values()
                      if mode in r and reference in r and r[reference][field] > 0]
            median = statistics.median(values)
            if mode == reference or not base or not paired:
                cells.append(f"{median:>22.1f}")
            else:
                of_medians = median / statistics.median(base)
                cells.append(f"{median:>9.1f} {of_medians:5.2f} {statistics.median(paired):5.2f}")
        print(f"{mode:24s} " + " ".join(cells))
    print("each traced cell: median, median / its off's median, median of the rounds' own ratios to their off")
    # Builds compared mode by mode: MODE against base:MODE (or alt:MODE) in the
    # same round, which cancels what the VM's phase does to both.
    pairs = [(mode, prefix + mode) for prefix in ("base:", "alt:") for mode in order
             if ":" not in mode and prefix + mode in order]
    if pairs:
        print()
        print(f"{'same round, build against build':32s} " + " ".join(f"{name:>14s}" for name in FIELDS))
        for mode, other in pairs:
            ratios = [sorted(r[mode][field] / r[other][field] for r in rounds.values()
                             if mode in r and other in r and r[other][field] > 0) for field in range(3)]
            cells = [f"{statistics.median(values):>14.3f}" if values else f"{'':>14s}" for values in ratios]
            spread = ratios[0]
            span = f"  (frames/s ratios {spread[0]:.2f}–{spread[-1]:.2f}, {len(spread)} rounds)" if spread else ""
            print(f"{mode + ' / ' + other:32s} " + " ".join(cells) + span)
        print("medians of each round's ratio of the two builds (or settings) in the same mode")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
