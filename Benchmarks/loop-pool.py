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

Each paired median comes with a 95 % confidence interval (distribution-free:
two order statistics of the rounds' ratios, chosen from the binomial
distribution), so an aim can be read as met, missed, or not separated by this
many rounds.

    Benchmarks/loop-tracing.sh 7 30000 | tee run1.txt   # and run2.txt, …
    Benchmarks/loop-pool.py run1.txt run2.txt run3.txt
    Benchmarks/loop-pool.py --self-test                 # checks the interval's arithmetic
"""
import math
import re
import statistics
import sys

ROUND = re.compile(r"round (\d+) (\S+): (\d+) frames/s, ([\d.]+) µs CPU per frame, p50 (\d+) µs")
FIELDS = ("frames/s", "CPU µs/frame", "p50 µs")


def median_interval_ranks(count: int, confidence: float = 0.95) -> tuple[int, int] | None:
    """1-based ranks (lower, upper) of the sorted sample that bound its median
    with at least `confidence`: the largest k with P(k <= B <= n - k) >=
    confidence for B ~ Binomial(n, 1/2). None when even the extremes do not
    reach it (fewer than 6 values for 95 %)."""
    best = None
    for k in range(1, count // 2 + 1):
        inside = sum(math.comb(count, i) for i in range(k, count - k + 1)) / 2 ** count
        if inside < confidence:
            break
        best = (k, count - k + 1)
    return best


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    ranks = median_interval_ranks(len(values), confidence)
    if ranks is None:
        return None
    ordered = sorted(values)
    return ordered[ranks[0] - 1], ordered[ranks[1] - 1]


def self_test() -> int:
    # The ranks that sign-test tables give for the median's 95 % interval
    # (coverage 96.9 %, 97.9 %, 95.9 %, 95.7 %, 96.2 %; one rank further in,
    # each falls below 95 %): n=6 -> 1st and 6th, n=10 -> 2nd and 9th,
    # n=20 -> 6th and 15th, n=30 -> 10th and 21st, n=40 -> 14th and 27th.
    expected = {5: None, 6: (1, 6), 10: (2, 9), 20: (6, 15), 30: (10, 21), 40: (14, 27)}
    failures = [f"n={n}: {median_interval_ranks(n)} != {ranks}" for n, ranks in expected.items()
                if median_interval_ranks(n) != ranks]
    interval = median_interval([float(v) for v in range(30, 0, -1)])
    if interval != (10.0, 21.0):
        failures.append(f"interval of 1..30 shuffled: {interval} != (10.0, 21.0)")
    for failure in failures:
        print("loop-pool self-test: " + failure, file=sys.stderr)
    if not failures:
        print("loop-pool self-test: ok")
    return 1 if failures else 0


def interval_text(values: list[float]) -> str:
    interval = median_interval(values)
    return f"[{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "[too few rounds]"


def main(paths: list[str]) -> int:
    if paths == ["--self-test"]:
        return self_test()
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
    # The paired ratios' 95 % intervals, printed after the table: an aim
    # outside one is met or missed; inside, this many rounds cannot tell.
    intervals = []
    for mode in order:
        reference = (mode.split(":", 1)[0] + ":off") if ":" in mode else "off"
        cells = []
        interval_cells = []
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
            interval_cells.append(f"{interval_text(paired):>22s}" if paired else f"{'':>22s}")
        print(f"{mode:24s} " + " ".join(cells))
        if mode != reference:
            intervals.append(f"{mode:24s} " + " ".join(interval_cells))
    print("each traced cell: median, median / its off's median, median of the rounds' own ratios to their off")
    if intervals:
        print()
        print("95 % intervals of the median of the rounds' own ratios to their off")
        print("\n".join(intervals))
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
            span = (f"  (frames/s ratios {spread[0]:.2f}–{spread[-1]:.2f}, 95 % interval {interval_text(spread)},"
                    f" {len(spread)} rounds)") if spread else ""
            print(f"{mode + ' / ' + other:32s} " + " ".join(cells) + span)
        print("medians of each round's ratio of the two builds (or settings) in the same mode")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
