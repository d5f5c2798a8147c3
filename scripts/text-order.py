#!/usr/bin/env python3
"""Writes deploy/text-order.txt: the functions `yomo serve` and `uppercase-sfn`
run at start, idle and under load, in that order, for lld's
--symbol-ordering-file (docs/performance.md, "Footprint (RSS)").

Why: the kernel maps file pages around each fault (64 KB windows), so code
touched here and there across a 14 MB text segment keeps ~9 MB of it resident
although the programs run ~3 MB of it. Laid out together, that code takes a
few windows.

How: scripts/static-build.sh builds both programs with a link map. Each
program then runs from a fresh copy written with O_DIRECT (none of its pages
cached) while the disk's read-ahead is 0, so a page is resident only if it was
run or read; /proc/PID/pagemap says which text pages are, and `nm` which
functions they hold. A function is listed if it overlaps such a page, except
in the few big sections that cannot be split (the static Swift libraries'
bulk .text) where the listed part is under 30 %: moving all of such a section
to the front would cost more pages than the few it saves. Needs root (pagemap
addresses, the disk's read_ahead_kb, restored on exit).

A stale order still links and runs, with less gain. SwiftPM does not relink
for a changed order alone, so remove the binaries to link with the new one:

    python3 scripts/text-order.py
    rm .build-static/release/{yomo,uppercase-sfn}; scripts/static-build.sh yomo uppercase-sfn

(Tried and no better: listing exactly the functions valgrind's callgrind sees
run, since valgrind serialises threads and misses code that concurrency reaches
in real runs; and dropping those `-profile-generate` counts as never run, since
most of the listed code is prebuilt and not instrumented.)
"""
import os, re, signal, struct, subprocess, sys, tempfile, time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
programs = ("yomo", "uppercase-sfn")
bin_dir = None  # set by build()
output = os.path.join(root, "deploy/text-order.txt")
port, otlp_port = 9651, 4451


def device_read_ahead_file(path):
    """The sysfs read_ahead_kb of the block device holding path."""
    dev = os.stat(path).st_dev
    major, minor = os.major(dev), os.minor(dev)
    block = os.path.realpath(f"/sys/dev/block/{major}:{minor}")
    for candidate in (block, os.path.dirname(block)):  # a partition's queue is its disk's
        knob = os.path.join(candidate, "queue/read_ahead_kb")
        if os.path.exists(knob):
            return knob
    sys.exit(f"no read_ahead_kb for {path} ({major}:{minor}); run on a block-device file system")


def cold_copy(program, directory):
    """A copy whose pages are not in the page cache: written with O_DIRECT."""
    source = os.path.join(bin_dir, program)
    target = os.path.join(directory, f"{program}-{time.monotonic_ns()}")
    subprocess.run(["dd", f"if={source}", f"of={target}", "bs=1M", "oflag=direct", "status=none"], check=True)
    os.chmod(target, 0o755)
    return target


def text_ranges(executable):
    """(start, end) of executable mappings of the program, and its load bias."""
    ranges, bias = [], None
    path = os.path.realpath(f"/proc/{executable.pid}/exe")
    with open(f"/proc/{executable.pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) < 6 or fields[5] != path:
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if int(fields[2], 16) == 0 and bias is None:
                bias = start
            if "x" in fields[1]:
                ranges.append((start, end))
    return ranges, bias


def resident_pages(process):
    """Link-time addresses of the text pages resident in process."""
    ranges, bias = text_ranges(process)
    pages = set()
    with open(f"/proc/{process.pid}/pagemap", "rb") as pagemap:
        for start, end in ranges:
            pagemap.seek(start // 4096 * 8)
            entries = pagemap.read((end - start) // 4096 * 8)
            for index in range(len(entries) // 8):
                if struct.unpack_from("<Q", entries, index * 8)[0] >> 63:
                    pages.add(start + index * 4096 - bias)
    return pages


def functions(executable):
    """(address, size, name) of the functions in executable, by address."""
    listing = subprocess.run(["nm", "-S", "--defined-only", executable], capture_output=True, text=True, check=True)
    found = []
    for line in listing.stdout.splitlines():
        match = re.match(r"([0-9a-f]+) ([0-9a-f]+) [tTwW] (\S+)$", line)
        if match:
            found.append((int(match.group(1), 16), int(match.group(2), 16), match.group(3)))
    return sorted(found)


def static_build(products, extra):
    """scripts/static-build.sh; returns the directory of the programs."""
    out = subprocess.run([os.path.join(root, "scripts/static-build.sh"), *products, "--", *extra],
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    return out.strip().splitlines()[-1]


def build(work):
    """Links both programs as the Dockerfile does, each with a link map; returns the maps."""
    global bin_dir
    bin_dir = static_build(programs, [])
    maps = {}
    for program in programs:
        maps[program] = os.path.join(work, f"{program}.map")
        os.remove(os.path.join(bin_dir, program))  # linked again, so that the map describes it
        static_build([program], ["-Xlinker", f"-Map={maps[program]}"])
    return maps


def sparse_symbols(map_file, listed):
    """Listed symbols that sit in big text sections mostly not listed."""
    sections, current = [], None
    with open(map_file) as f:
        for line in f:
            match = re.match(r"\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+\s+(.*)$", line)
            if not match:
                continue
            address, size, what = int(match.group(1), 16), int(match.group(2), 16), match.group(3)
            if ":(" in what and not what.startswith("."):
                current = (address, size, what, []) if "(.text" in what else None
                if current:
                    sections.append(current)
            elif current is not None:
                current[3].append((address, what.strip()))
    sparse = set()
    for address, size, _, symbols in sections:
        if size < 32 * 1024:
            continue
        symbols.sort()
        ends = [a for a, _ in symbols[1:]] + [address + size]
        listed_bytes = sum(end - a for (a, name), end in zip(symbols, ends) if name in listed)
        if listed_bytes < 0.3 * size:
            sparse |= {name for _, name in symbols if name in listed}
    return sparse


def run(command, environment):
    return subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_port(number, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/udp") as udp:
            if any(f":{number:04X} " in line for line in udp):
                return
        time.sleep(0.05)
    sys.exit(f"nothing listened on udp port {number}")


def profile(work, mode):
    """Phases [(name, zipper pages, function pages)] of one cold run in mode
    (page addresses as linked, so the same for every copy of a program)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "YOMO_"))}
    environment["OTEL_METRICS_EXPORTER"] = "none"
    if mode == "on":
        environment["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{otlp_port}"
    zipper_binary, function_binary = cold_copy(programs[0], work), cold_copy(programs[1], work)
    zipper = run([zipper_binary, "serve", "--host", "127.0.0.1", "--port", str(port)], environment)
    function = None
    try:
        wait_for_port(port)
        function = run([function_binary, "--zipper", f"127.0.0.1:{port}"], environment)
        time.sleep(2)  # connected and idle, as Benchmarks/footprint.sh measures
        phases = [("idle", resident_pages(zipper), resident_pages(function))]
        bench = os.path.join(bin_dir, "yomo")
        for size, inflight in ((1024, 256), (16, 1)):
            subprocess.run([bench, "bench", "--zipper", f"127.0.0.1:{port}", "--size", str(size),
                            "--inflight", str(inflight), "--frames", "3000"],
                           env=environment, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        phases.append(("busy", resident_pages(zipper), resident_pages(function)))
        return phases
    finally:
        for process in (function, zipper):
            if process:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=20)


def main():
    if os.geteuid() != 0:
        sys.exit("needs root: pagemap addresses and the disk's read_ahead_kb")
    with tempfile.TemporaryDirectory(dir=root, prefix=".text-order-") as work:
        maps = build(work)
        knob = device_read_ahead_file(work)
        saved = open(knob).read().strip()
        receiver = run([os.path.join(bin_dir, "yomo"), "trace-view", "--listen", f"127.0.0.1:{otlp_port}", "--discard"],
                       dict(os.environ))
        try:
            with open(knob, "w") as f:
                f.write("0")
            runs = [profile(work, mode) for mode in ("off", "on")]
        finally:
            with open(knob, "w") as f:
                f.write(saved)
            receiver.terminate()
            receiver.wait(timeout=20)
        ordered, seen = [], set()
        tables = {program: functions(os.path.join(bin_dir, program)) for program in programs}
        # Start-up and idle code of both programs first, then what load adds.
        for phase in (0, 1):
            for phases in runs:
                for program, pages in zip(programs, phases[phase][1:]):
                    for address, size, name in tables[program]:
                        first, last = address // 4096 * 4096, (address + max(size, 1) - 1) // 4096 * 4096
                        if name not in seen and any(page in pages for page in range(first, last + 1, 4096)):
                            seen.add(name)
                            ordered.append(name)
        sparse = set().union(*(sparse_symbols(maps[p], seen) for p in programs))
        ordered = [name for name in ordered if name not in sparse]
    with open(output, "w") as f:
        f.write("\n".join(ordered) + "\n")
    for phases in runs:
        for name, zipper_pages, function_pages in phases:
            print(f"{name}: zipper {len(zipper_pages) * 4} kB of text resident, function {len(function_pages) * 4} kB")
    print(f"{output}: {len(ordered)} functions ({len(sparse)} left out: they sit in big sections mostly not run)")


main()
