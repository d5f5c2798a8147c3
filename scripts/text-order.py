#!/usr/bin/env python3
"""Writes deploy/text-order/yomo.txt and deploy/text-order/uppercase-sfn.txt:
the functions each program runs, those of start-up and idle first, for lld's
--symbol-ordering-file (docs/performance.md, "Footprint (RSS)").

Why: the kernel maps file pages around each fault (64 KB windows), so code
run here and there across a 14 MB text segment keeps whole windows of it
resident. Laid out together, the code a program runs takes few windows.

How: scripts/static-build.sh builds both programs with a link map. Each
program's list has four parts:
1. what valgrind's callgrind sees it run at start-up and idle (both programs
   connected, nothing flowing), tracing off and on: exactly the functions run;
2. what callgrind sees it run under load (`yomo bench`, 1 KiB x 256 and
   16 B x 1);
3. the functions on the text pages resident after the same runs without
   valgrind, from a copy written with O_DIRECT (none of its pages cached)
   while the disk's read-ahead is 0, so that a page is resident only if it
   was run or read (/proc/PID/pagemap says which). Callgrind serialises
   threads, so code only concurrency reaches can be missing from 1 and 2;
   this part keeps it near. It lists whole pages, so alone (as this script
   did before) it also listed the unrun functions beside each run one: the
   idle block was 2.7 MB for ~0.8 MB run.
4. one symbol of each `.rodata` input section the idle programs read (pages
   resident in the same cold runs): Swift's type metadata and strings sit in
   one such section per object file, so this puts the objects' data that runs
   together too (-0.13 MB resident in the idle function).
Functions in the big sections that cannot be split (the static Swift
libraries' bulk .text) are left out where what runs in the section falls in
fewer 64 KB windows than the section is long: there, moving all of it to the
front would cost more pages than it saves.
Needs root (pagemap addresses, the disk's read_ahead_kb, restored on exit)
and valgrind.

Run it twice after big changes: part 3 is read from pages, so it is better
when the programs were already linked with an order (the second run took
another 0.6 MB of text off the idle function). The objects must have been
compiled with function sections; the script stops if the link map shows one
that was not (an old .build-static: remove it).

A stale order still links and runs, with less gain. SwiftPM does not relink
for a changed order alone, so remove the binaries to link with the new one:

    python3 scripts/text-order.py
    rm .build-static/release/{yomo,uppercase-sfn}; scripts/static-build.sh yomo uppercase-sfn
"""
import bisect, os, re, signal, struct, subprocess, sys, tempfile, time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
programs = ("yomo", "uppercase-sfn")
bin_dir = None  # set by build()
output_dir = os.path.join(root, "deploy/text-order")
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


def text_ranges(executable, code=True):
    """(start, end) of the program's executable mappings (code) or its others,
    and its load bias."""
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
            if ("x" in fields[1]) == code:
                ranges.append((start, end))
    return ranges, bias


def resident_pages(process, code=True):
    """Link-time addresses of the text (or, not code, data) pages resident in process."""
    ranges, bias = text_ranges(process, code)
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


class LinkMap:
    """The input sections of a link map (lld's -Map) with the symbols each
    defines, and the names defined more than once in the program (local
    helpers such as `block_copy_helper`: an order moves every section that
    defines a listed name)."""

    def __init__(self, map_file):
        self.sections = []  # (address, size, "file:(section)", [(address, symbol)])
        seen, self.repeated, current = set(), set(), None
        with open(map_file) as f:
            for line in f:
                match = re.match(r"\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+\s+(.*)$", line)
                if not match:
                    continue
                address, size, what = int(match.group(1), 16), int(match.group(2), 16), match.group(3).strip()
                if what.startswith("."):  # an output section
                    current = None
                elif ":(" in what:
                    current = (address, size, what, [])
                    self.sections.append(current)
                elif current is not None:
                    if what in seen:
                        self.repeated.add(what)
                    seen.add(what)
                    current[3].append((address, what))

    def big_text(self):
        """Text sections of 32 KB or more: code not split a function a section."""
        return [s for s in self.sections if "(.text" in s[2] and s[1] >= 32 * 1024]

    def unsplit_objects(self):
        """Objects of this package's build whose code sits in one big `.text`."""
        return [what for _, _, what, _ in self.big_text() if "/.build" in what and what.endswith(":(.text)")]


def read_only_data(link_map, pages):
    """One symbol for each `.rodata` input section that the idle programs read
    (on pages resident in the cold runs), so that the link puts those sections
    together too, where it is worth it by the same 64 KB windows as code. A
    section is named by a symbol defined once in it; one without is left."""
    chosen = []
    for address, size, what, symbols in link_map.sections:
        if ":(.rodata" not in what or not size:
            continue
        touched = {page for page in range(address // 4096 * 4096, address + size, 4096) if page in pages}
        if not touched or size > len({page // 65536 for page in touched}) * 65536:
            continue
        unique = [name for _, name in symbols if name not in link_map.repeated]
        if unique:
            chosen.append(unique[0])
    return chosen


def unlisted_symbols(link_map, run):
    """Symbols not to list: those of big sections better left where they are,
    and names defined more than once of which one is in a big section (listed,
    they would move it whatever ran). A big section is better left where the
    functions run in it fall in fewer 64 KB windows than it is long: its
    resident cost where it is (those windows) is less than moving all of it
    into the block of code run (its length)."""
    sections = link_map.big_text()
    unlisted = link_map.repeated & {name for _, _, _, symbols in sections for _, name in symbols}
    for address, size, _, symbols in sections:
        symbols = sorted(symbols)
        ends = [a for a, _ in symbols[1:]] + [address + size]
        windows = set()
        for (start, name), end in zip(symbols, ends):
            if name in run and name not in unlisted:
                windows.update(range((start - address) // 65536, (end - 1 - address) // 65536 + 1))
        if size > len(windows) * 65536:
            unlisted |= {name for _, name in symbols}
    return unlisted


def environment_for(mode):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "YOMO_"))}
    environment["OTEL_METRICS_EXPORTER"] = "none"
    if mode == "on":
        environment["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{otlp_port}"
    return environment


def run(command, environment, log=None):
    output = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=output)


def wait_for_port(number, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/udp") as udp:
            if any(f":{number:04X} " in line for line in udp):
                return
        time.sleep(0.05)
    sys.exit(f"nothing listened on udp port {number}")


def wait_for_line(log, text, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log) as f:
            if text in f.read():
                return
        time.sleep(0.2)
    sys.exit(f"{log}: no \"{text}\" within {timeout} s")


def load(environment):
    """The load both profiles run: 1 KiB x 256 in flight and 16 B x 1, through native yomo bench."""
    bench = os.path.join(bin_dir, "yomo")
    for size, inflight, frames in ((1024, 256, 3000), (16, 1, 300)):
        subprocess.run([bench, "bench", "--zipper", f"127.0.0.1:{port}", "--size", str(size),
                        "--inflight", str(inflight), "--frames", str(frames)],
                       env=environment, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(processes):
    for process in processes:
        if process:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)


def cold_profile(work, mode):
    """{program: (idle text pages, busy text pages, idle data pages)} of one
    cold run in mode (page addresses as linked, so the same for every copy of
    a program)."""
    environment = environment_for(mode)
    zipper_binary, function_binary = cold_copy(programs[0], work), cold_copy(programs[1], work)
    zipper = run([zipper_binary, "serve", "--host", "127.0.0.1", "--port", str(port)], environment)
    function = None
    try:
        wait_for_port(port)
        function = run([function_binary, "--zipper", f"127.0.0.1:{port}"], environment)
        time.sleep(2)  # connected and idle, as Benchmarks/footprint.sh measures
        idle = (resident_pages(zipper), resident_pages(function))
        data = (resident_pages(zipper, code=False), resident_pages(function, code=False))
        load(environment)
        busy = (resident_pages(zipper), resident_pages(function))
        return {program: (idle[i], busy[i], data[i]) for i, program in enumerate(programs)}
    finally:
        stop((function, zipper))


def callgrind_functions(path, program_path, table):
    """Functions of the program that a callgrind output file records as run.
    Callgrind names a function by its symbol (`'2` marks a recursion level) or,
    without one, by its address: that is looked up in the symbol table."""
    starts = [address for address, _, _ in table]
    names, objects, current, found = {}, {}, None, set()
    with open(path, errors="replace") as f:
        for line in f:
            match = re.match(r"(c?ob|c?fn)=\((\d+)\)(?: (.*))?", line)
            if not match:
                continue
            kind, key, text = match.groups()
            if kind.endswith("ob"):
                if text:
                    objects[key] = text.strip()
                if kind == "ob":
                    current = objects.get(key)
                continue
            if text:
                names[key] = re.sub(r"'\d+$", "", text.strip())
            if kind == "fn" and current and os.path.realpath(current) == program_path:
                name = names[key]
                if name.startswith("0x"):
                    index = bisect.bisect_right(starts, int(name, 16)) - 1
                    if index < 0:
                        continue
                    name = table[index][2]
                found.add(name)
    return found


def callgrind_profile(work, mode, tables):
    """{program: (idle functions, busy functions)} that callgrind sees run in mode."""
    environment = environment_for(mode)
    copies, outputs, processes = {}, {}, {}
    for program in programs:
        copies[program] = os.path.join(work, f"{program}.callgrind")
        subprocess.run(["strip", "--strip-debug", "-o", copies[program], os.path.join(bin_dir, program)], check=True)
        outputs[program] = os.path.join(work, f"callgrind.{program}.{mode}")
    valgrind = ["valgrind", "--tool=callgrind", "--demangle=no"]
    zipper_log = os.path.join(work, f"zipper.{mode}.log")
    try:
        processes["yomo"] = run([*valgrind, f"--callgrind-out-file={outputs['yomo']}", copies["yomo"],
                                 "serve", "--host", "127.0.0.1", "--port", str(port)], environment, zipper_log)
        wait_for_port(port, timeout=120)
        processes["uppercase-sfn"] = run([*valgrind, f"--callgrind-out-file={outputs['uppercase-sfn']}",
                                          copies["uppercase-sfn"], "--zipper", f"127.0.0.1:{port}"], environment)
        wait_for_line(zipper_log, "client connected", timeout=120)
        time.sleep(2)
        for program in programs:  # what ran up to here goes to <output>.1; the rest to <output> at exit
            subprocess.run(["callgrind_control", "--dump=idle", str(processes[program].pid)],
                           check=True, stdout=subprocess.DEVNULL)
        load(environment)
    finally:
        stop((processes.get("uppercase-sfn"), processes.get("yomo")))
    found = {}
    for program in programs:
        path = os.path.realpath(copies[program])
        idle = callgrind_functions(outputs[program] + ".1", path, tables[program])
        busy = callgrind_functions(outputs[program], path, tables[program])
        found[program] = (idle, busy - idle)
    return found


def on_pages(table, pages):
    """Functions of table that overlap a page of pages."""
    listed = []
    for address, size, name in table:
        first, last = address // 4096 * 4096, (address + max(size, 1) - 1) // 4096 * 4096
        if any(page in pages for page in range(first, last + 1, 4096)):
            listed.append(name)
    return listed


def main():
    if os.geteuid() != 0:
        sys.exit("needs root: pagemap addresses and the disk's read_ahead_kb")
    with tempfile.TemporaryDirectory(dir=root, prefix=".text-order-") as work:
        maps = build(work)
        link_maps = {program: LinkMap(maps[program]) for program in programs}
        for program in programs:
            unsplit = link_maps[program].unsplit_objects()
            if unsplit:
                sys.exit(f"{unsplit[0]}: compiled without function sections; remove the scratch directory and run again")
        tables = {program: functions(os.path.join(bin_dir, program)) for program in programs}
        receiver = run([os.path.join(bin_dir, "yomo"), "trace-view", "--listen", f"127.0.0.1:{otlp_port}", "--discard"],
                       dict(os.environ))
        try:
            exact = [callgrind_profile(work, mode, tables) for mode in ("off", "on")]
            knob = device_read_ahead_file(work)
            saved = open(knob).read().strip()
            try:
                with open(knob, "w") as f:
                    f.write("0")
                cold = [cold_profile(work, mode) for mode in ("off", "on")]
            finally:
                with open(knob, "w") as f:
                    f.write(saved)
        finally:
            receiver.terminate()
            receiver.wait(timeout=20)
        os.makedirs(output_dir, exist_ok=True)
        for program in programs:
            address = {name: a for a, _, name in tables[program]}
            # Exact parts in address order (code of one source file stays together), then the pages.
            parts = [sorted(set().union(*(run[program][0] for run in exact)) & address.keys(), key=address.get),
                     sorted(set().union(*(run[program][1] for run in exact)) & address.keys(), key=address.get),
                     [name for run in cold for name in on_pages(tables[program], run[program][0] | run[program][1])]]
            run_functions = set(parts[0]) | set(parts[1])
            unlisted = unlisted_symbols(link_maps[program], run_functions)
            ordered, seen = [], set()
            parts.append(read_only_data(link_maps[program], set().union(*(run[program][2] for run in cold))))
            for part in parts:
                for name in part:
                    if name not in seen and name not in unlisted:
                        seen.add(name)
                        ordered.append(name)
            with open(os.path.join(output_dir, f"{program}.txt"), "w") as f:
                f.write("\n".join(ordered) + "\n")
            idle_kb = sum(size for _, size, name in tables[program] if name in set(parts[0])) // 1024
            print(f"{program}: {len(parts[0])} functions ({idle_kb} kB) run at start-up and idle, "
                  f"{len(parts[1])} more under load, {len(ordered)} listed in all; "
                  f"cold, {len(cold[0][program][0]) * 4} kB of text resident idle")


main()
