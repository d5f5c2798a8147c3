#!/usr/bin/env python3
"""Compiles every Swift code sample of the docs, and checks that
docs/configuration.md names every setting the code reads.

    scripts/check-doc-samples.py                    # what CI runs
    scripts/check-doc-samples.py --update           # after editing a sample: regenerate, then check
    scripts/check-doc-samples.py --no-build         # only the fast checks (no swift build)
    scripts/check-doc-samples.py --scratch-path .build-docs   # build somewhere else than .build

Samples. Every ```swift block of README.md and docs/*.md is code that must
compile against this package. The blocks are copied into Examples/DocSamples/
(the `DocSamples` target of Package.swift), one file per sample:

- a plain ```swift block holds statements, as in a main.swift: its `import`
  lines go to the top of the file and the rest becomes the body of
  `func sample_<doc>_<n>() async throws { ... }`;
- `<!-- sample: file -->` on the line before the fence: the block is a whole
  file (types, extensions, an `@main` type) and is copied as it is, except
  that `@main` is commented out (a module has one entry point at most);
- `<!-- sample: continue -->` on the line before the fence: the block goes on
  from the previous ```swift block of the same doc (same function or file), so
  it can use the names that one declared;
- `<!-- sample: manifest -->` on the line before the fence: the block is a
  user's Package.swift. It is not compiled into the target but loaded with
  `swift package dump-package` in a scratch folder, and every product it takes
  from swift-yomo must be a library product of Package.swift.

A block that must not compile (output, a signature listing, pseudo-code) is
labelled as what it is (```text, ```sh, ```json, ...); keep that rare. An
unlabelled block that looks like Swift is an error, as is a ```swift block
with anything else on its fence line.

Examples/DocSamples/ is committed and generated: the check fails when it is not
exactly what the docs hold now (run --update), then builds the target and
reports each compiler error at the doc line it comes from. The generated files
carry no doc line numbers, so editing prose around a sample needs no --update;
changing a sample does.

Configuration reference. docs/configuration.md must name (in backticks) every
environment variable read in Sources/ (string literals "OTEL_..."/"YOMO_..."
plus the OTLP exporter's per-signal names) and in scripts/*.sh (${NAME:-...}),
every command-line flag of the executables (@Option/@Flag in Sources/YoMoCLI
and Examples/), and every public property of the configuration types listed in
CONFIG_TYPES; and every OTEL_/YOMO_ name it mentions must be read somewhere.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = ROOT / "Examples" / "DocSamples"
TARGET = "DocSamples"
CONFIG_DOC = ROOT / "docs" / "configuration.md"
INDENT = "    "
HEADER_FILE = "DocSamples.swift"

# Configuration types whose public properties docs/configuration.md must name:
# (enclosing type or None, type). Found by name anywhere under Sources/.
CONFIG_TYPES = [
    ("StreamFunction", "Options"),  # also Source.Options (a typealias)
    ("Zipper", "Options"),
    (None, "ZipperConfiguration"),
    (None, "ReconnectPolicy"),
    (None, "QUICConfiguration"),
    (None, "TLSConfiguration"),
    (None, "ServerTLSConfiguration"),
    ("TracerProvider", "Configuration"),
    ("BatchSpanProcessor", "Configuration"),
    (None, "SpanLimits"),
    (None, "OTLPExporterConfiguration"),
    ("YoMoLogging", "Configuration"),
    ("LogWriter", "Configuration"),
    ("BatchLogRecordProcessor", "Configuration"),
]

# OTLPExporterConfiguration builds these names by interpolation
# ("OTEL_EXPORTER_OTLP_\(signal.environmentInfix)_\(suffix)"), so no literal holds them.
OTLP_SIGNALS = ["TRACES", "LOGS"]
OTLP_SUFFIXES = ["ENDPOINT", "HEADERS", "TIMEOUT", "COMPRESSION", "PROTOCOL", "CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY"]
OTLP_INTERPOLATION = "OTEL_EXPORTER_OTLP_\\(signal.environmentInfix)_"


class CheckError(Exception):
    pass


# --------------------------------------------------------------------------- samples

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
DIRECTIVE = re.compile(r"^\s*<!--\s*sample:\s*(?P<kind>[a-z-]+)\s*-->\s*$")
ANY_DIRECTIVE = re.compile(r"<!--\s*sample\b")
DIRECTIVES = ("file", "continue", "manifest")
LOOKS_LIKE_SWIFT = re.compile(
    r"^\s*(import [A-Z]\w*\s*$|(let|var) \w+(: [^=]+)? = |try await |await \w|func \w+\(|"
    r"(struct|final class|class|enum|extension|protocol) \w+.*\{\s*$|@main\b)"
)
IMPORT = re.compile(r"^\s*(@\w+\s+)*((public|package|internal|fileprivate|private)\s+)?import\s+\S")
MAIN_ATTRIBUTE = re.compile(r"^(\s*)@main\b")


@dataclass
class Block:
    doc: str  # path relative to ROOT, e.g. docs/api.md
    fence_line: int  # 1-based line of the opening fence
    indent: int  # columns stripped from every line (fences inside lists)
    lines: list[str]  # the content, indentation stripped
    directive: str | None  # None or one of DIRECTIVES

    @property
    def first_line(self) -> int:
        return self.fence_line + 1


@dataclass
class Group:
    """One generated file: a block and the blocks that continue it."""
    doc: str
    number: int
    kind: str  # "statements" or "file"
    blocks: list[Block] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return re.sub(r"[^A-Za-z0-9]", "_", self.doc[: -len(".md")]) + f"_{self.number}"


@dataclass
class Generated:
    name: str
    text: str
    # generated line (1-based) -> (doc, doc line, columns to add to map a generated column)
    mapping: dict[int, tuple[str, int, int]]


def sample_docs() -> list[Path]:
    docs = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    return [doc for doc in docs if doc.is_file()]


def parse_doc(path: Path) -> list[Block]:
    relative = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks: list[Block] = []
    problems: list[str] = []
    i = 0
    pending_directive: tuple[str, int] | None = None  # (kind, line)
    while i < len(lines):
        line = lines[i]
        if ANY_DIRECTIVE.search(line):
            match = DIRECTIVE.match(line)
            if not match or match["kind"] not in DIRECTIVES:
                problems.append(f"{relative}:{i + 1}: unknown sample directive (one of: "
                                + ", ".join(f"<!-- sample: {kind} -->" for kind in DIRECTIVES) + ")")
            else:
                if pending_directive:
                    problems.append(f"{relative}:{pending_directive[1]}: sample directive not followed by a ```swift block")
                pending_directive = (match["kind"], i + 1)
            i += 1
            continue
        opening = FENCE.match(line)
        if not opening:
            if line.strip() and pending_directive:
                problems.append(f"{relative}:{pending_directive[1]}: sample directive not followed by a ```swift block")
                pending_directive = None
            i += 1
            continue
        indent = opening["indent"]
        fence = opening["fence"]
        info = opening["info"].strip()
        if fence[0] == "`" and "`" in info:
            i += 1  # inline code that starts a line, not a fence
            continue
        # Find the closing fence.
        content: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = FENCE.match(lines[j])
            if closing and closing["fence"][0] == fence[0] and len(closing["fence"]) >= len(fence) and not closing["info"].strip():
                break
            raw = lines[j]
            content.append(raw[len(indent):] if raw.startswith(indent) else raw.lstrip())
            j += 1
        else:
            problems.append(f"{relative}:{i + 1}: code block is never closed")
        language = info.split()[0] if info else ""
        directive = pending_directive[0] if pending_directive else None
        if language == "swift":
            if info != "swift":
                problems.append(f"{relative}:{i + 1}: ```{info}: a compiled sample's fence says only ```swift "
                                "(use <!-- sample: ... --> for file/continue, or ```text for code that must not compile)")
            blocks.append(Block(relative, i + 1, len(indent), content, directive))
        else:
            if directive:
                problems.append(f"{relative}:{pending_directive[1]}: sample directive before a ```{info} block (only ```swift blocks are samples)")
            if language.lower().startswith("swift"):
                problems.append(f"{relative}:{i + 1}: ```{info} is not a sample kind: label compiled samples ```swift, "
                                "and code that must not compile ```text")
            if not info:
                suspicious = next((k for k, text in enumerate(content) if LOOKS_LIKE_SWIFT.match(text)), None)
                if suspicious is not None:
                    problems.append(f"{relative}:{i + 2 + suspicious}: unlabelled code block looks like Swift: "
                                    "label it ```swift (compiled) or ```text")
        pending_directive = None
        i = j + 1
    if pending_directive:
        problems.append(f"{relative}:{pending_directive[1]}: sample directive not followed by a ```swift block")
    if problems:
        raise CheckError("\n".join(problems))
    return blocks


def group_blocks(blocks: list[Block]) -> list[Group]:
    groups: list[Group] = []
    for block in blocks:
        if block.directive == "manifest":
            continue  # checked by check_manifests, not compiled into the target
        if block.directive == "continue":
            if not groups:
                raise CheckError(f"{block.doc}:{block.fence_line - 1}: <!-- sample: continue --> but no earlier ```swift block in this doc")
            groups[-1].blocks.append(block)
            continue
        kind = "file" if block.directive == "file" else "statements"
        groups.append(Group(block.doc, len(groups) + 1, kind, [block]))
    return groups


def header(doc: str) -> list[str]:
    return [
        f"// Generated by scripts/check-doc-samples.py from {doc}: do not edit.",
        "// Edit the doc, then run `scripts/check-doc-samples.py --update`.",
    ]


def generate(group: Group) -> Generated:
    out: list[str] = header(group.doc)
    mapping: dict[int, tuple[str, int, int]] = {}

    def emit(text: str, block: Block | None = None, offset: int = 0, column_shift: int = 0) -> None:
        out.append(text)
        if block is not None:
            mapping[len(out)] = (block.doc, block.first_line + offset, column_shift)

    def label(block: Block, position: int) -> str:
        ordinal = f"sample {group.number}" + (f", continued ({position + 1})" if position else "")
        return f"// {block.doc}, {ordinal}"

    if group.kind == "file":
        for position, block in enumerate(group.blocks):
            emit("")
            emit(label(block, position))
            for offset, text in enumerate(block.lines):
                neutral = MAIN_ATTRIBUTE.sub(r"\1/*@main*/", text)
                emit(neutral, block, offset, block.indent)
    else:
        imports: list[tuple[str, Block, int]] = []
        seen: set[str] = set()
        for block in group.blocks:
            for offset, text in enumerate(block.lines):
                if IMPORT.match(text) and text.strip() not in seen:
                    seen.add(text.strip())
                    imports.append((text.strip(), block, offset))
        if imports:
            emit("")
        for text, block, offset in imports:
            emit(text, block, offset, block.indent)
        emit("")
        emit(f"func sample_{group.stem}() async throws {{")
        for position, block in enumerate(group.blocks):
            if position:
                emit("")
            emit(INDENT + label(block, position))
            body = [(offset, text) for offset, text in enumerate(block.lines) if not IMPORT.match(text)]
            while body and not body[0][1].strip():
                body.pop(0)
            for offset, text in body:
                emit((INDENT + text) if text.strip() else "", block, offset, block.indent - len(INDENT))
        emit("}")
    return Generated(f"{group.stem}.swift", "\n".join(out) + "\n", mapping)


def header_file() -> Generated:
    text = "\n".join([
        "// The DocSamples target: every ```swift block of README.md and docs/*.md,",
        "// generated by scripts/check-doc-samples.py (which CI runs) so that a sample",
        "// that stops compiling fails the build. Do not edit these files: edit the",
        "// docs, then run `scripts/check-doc-samples.py --update`. The script's",
        "// docstring says how blocks become files (plain, `file` and `continue` samples).",
    ]) + "\n"
    return Generated(HEADER_FILE, text, {})


def extract() -> tuple[list[Generated], list[Block], int]:
    problems: list[str] = []
    generated = [header_file()]
    manifests: list[Block] = []
    count = 0
    for doc in sample_docs():
        try:
            blocks = parse_doc(doc)
            groups = group_blocks(blocks)
        except CheckError as error:
            problems.append(str(error))
            continue
        count += sum(len(group.blocks) for group in groups)
        generated += [generate(group) for group in groups]
        manifests += [block for block in blocks if block.directive == "manifest"]
    if problems:
        raise CheckError("\n".join(problems))
    return generated, manifests, count


def check_manifests(manifests: list[Block]) -> list[str]:
    """Each manifest sample must load, and name only products this package has."""
    ours = set(re.findall(r'\.library\(\s*name:\s*"([^"]+)"', (ROOT / "Package.swift").read_text(encoding="utf-8")))
    problems = []
    for block in manifests:
        where = f"{block.doc}:{block.first_line}"
        with tempfile.TemporaryDirectory(prefix="doc-sample-manifest-") as scratch:
            Path(scratch, "Package.swift").write_text("\n".join(block.lines) + "\n", encoding="utf-8")
            result = subprocess.run(["swift", "package", "dump-package"], cwd=scratch,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            # Diagnostics name the scratch copy: point them at the doc instead.
            located = re.sub(re.escape(scratch) + r"/Package\.swift:(\d+):",
                             lambda m: f"{block.doc}:{block.first_line + int(m[1]) - 1}:", result.stderr)
            detail = "\n    ".join(located.strip().splitlines()[-8:])
            problems.append(f"{where}: this Package.swift does not load:\n    {detail}")
            continue
        manifest = json.loads(result.stdout)
        for target in manifest.get("targets", []):
            for dependency in target.get("dependencies", []):
                product = dependency.get("product")
                if product and product[1] == "swift-yomo" and product[0] not in ours:
                    problems.append(f"{where}: target {target['name']} uses product {product[0]}, "
                                    f"which Package.swift does not have (it has {', '.join(sorted(ours))})")
    return problems


def stale_files(generated: list[Generated]) -> list[str]:
    expected = {g.name: g.text for g in generated}
    present = {p.name: p for p in SAMPLES_DIR.iterdir() if p.is_file()} if SAMPLES_DIR.is_dir() else {}
    stale = []
    for name, text in sorted(expected.items()):
        if name not in present:
            stale.append(f"missing {name}")
        elif present[name].read_text(encoding="utf-8") != text:
            stale.append(f"differs {name}")
    for name in sorted(set(present) - set(expected)):
        stale.append(f"extra   {name}")
    return stale


def write_files(generated: list[Generated]) -> list[str]:
    SAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    changed = []
    expected = {g.name for g in generated}
    for path in SAMPLES_DIR.iterdir():
        if path.is_file() and path.name not in expected:
            path.unlink()
            changed.append(f"removed {path.name}")
    for g in generated:
        path = SAMPLES_DIR / g.name
        if not path.exists() or path.read_text(encoding="utf-8") != g.text:
            path.write_text(g.text, encoding="utf-8")
            changed.append(f"wrote   {g.name}")
    return changed


DIAGNOSTIC = re.compile(r"^(?P<path>[^\s:][^:]*\.swift):(?P<line>\d+):(?P<column>\d+): (?P<severity>error|warning|note): (?P<message>.*)$")


def build(generated: list[Generated], scratch_path: str | None, verbose: bool) -> bool:
    command = ["swift", "build", "--target", TARGET]
    if scratch_path:
        command += ["--scratch-path", scratch_path]
    print(f"doc samples: {' '.join(command)}", flush=True)
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    elapsed = time.monotonic() - started
    mappings = {g.name: g.mapping for g in generated}
    mapped: list[tuple[tuple[str, int, int], str]] = []
    seen: set[str] = set()
    for line in result.stdout.splitlines():
        match = DIAGNOSTIC.match(line)
        if not match:
            continue
        path = Path(match["path"])
        if path.parent.name != SAMPLES_DIR.name or path.name not in mappings:
            continue
        target = mappings[path.name].get(int(match["line"]))
        if target:
            doc, doc_line, shift = target
            key = (doc, doc_line, max(1, int(match["column"]) + shift))
        else:
            key = (str(path.relative_to(ROOT) if path.is_absolute() else path), int(match["line"]), int(match["column"]))
        location = f"{key[0]}:{key[1]}:{key[2]}"
        text = f"{location}: {match['severity']}: {match['message']}"
        if text in seen:
            continue
        seen.add(text)
        if match["severity"] == "error" or verbose:
            mapped.append((key, text))
    mapped.sort()
    if result.returncode != 0:
        print(result.stdout.rstrip())
        print(f"\ndoc samples: the build failed ({elapsed:.1f} s):", file=sys.stderr)
        for _, text in mapped or [((), "(no error located in a sample: see the output above)")]:
            print(f"  {text}", file=sys.stderr)
        return False
    if verbose:
        for _, text in mapped:
            print(f"  {text}")
    print(f"doc samples: built in {elapsed:.1f} s")
    return True


# --------------------------------------------------------------------------- configuration reference

def swift_sources(*directories: str) -> list[Path]:
    files: list[Path] = []
    for directory in directories:
        files += sorted((ROOT / directory).rglob("*.swift"))
    return [f for f in files if SAMPLES_DIR not in f.parents]


ENV_LITERAL = re.compile(r'"((?:OTEL|YOMO)_[A-Z0-9_]*[A-Z0-9])"')


def test_environment_variables() -> set[str]:
    """Read only by tests: the page may name them, but need not."""
    return {name for path in swift_sources("Tests") for name in ENV_LITERAL.findall(path.read_text(encoding="utf-8"))}


def environment_variables() -> set[str]:
    names: set[str] = set()
    literal = ENV_LITERAL
    interpolated = False
    for path in swift_sources("Sources", "Examples"):
        text = path.read_text(encoding="utf-8")
        names.update(literal.findall(text))
        interpolated = interpolated or OTLP_INTERPOLATION in text
    if not interpolated:
        raise CheckError(f"no Swift source builds {OTLP_INTERPOLATION}… any more: update OTLP_SIGNALS/OTLP_SUFFIXES in {Path(__file__).name}")
    for suffix in OTLP_SUFFIXES:
        names.add(f"OTEL_EXPORTER_OTLP_{suffix}")
        names.update(f"OTEL_EXPORTER_OTLP_{signal}_{suffix}" for signal in OTLP_SIGNALS)
    for path in sorted((ROOT / "scripts").glob("*.sh")):
        names.update(re.findall(r"\$\{([A-Z][A-Z0-9_]*):-", path.read_text(encoding="utf-8")))
    return names


def skip_string(text: str, i: int) -> int:
    """`text[i]` is a double quote: the index after the string literal."""
    if text.startswith('"""', i):
        end = text.find('"""', i + 3)
        return len(text) if end < 0 else end + 3
    i += 1
    while i < len(text) and text[i] != '"':
        i += 2 if text[i] == "\\" else 1
    return i + 1


def skip_literal_or_comment(text: str, i: int) -> int | None:
    """The index after the string literal or comment starting at `text[i]`, or
    None when none starts there."""
    if text[i] == '"':
        return skip_string(text, i)
    if text.startswith("//", i):
        end = text.find("\n", i)
        return len(text) if end < 0 else end
    if text.startswith("/*", i):
        end = text.find("*/", i)
        return len(text) if end < 0 else end + 2
    return None


def matching(text: str, i: int, opening: str, closing: str) -> int:
    """`text[i]` is `opening`: the index of its `closing`, skipping strings and comments."""
    depth = 0
    while i < len(text):
        c = text[i]
        skipped = skip_literal_or_comment(text, i)
        if skipped is not None:
            i = skipped
            continue
        if c == opening:
            depth += 1
        elif c == closing:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return len(text)


def command_line_flags() -> set[str]:
    flags: set[str] = set()
    for path in swift_sources("Sources/YoMoCLI", "Examples"):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"@(Option|Flag)\b", text):
            i = match.end()
            arguments = ""
            if i < len(text) and text[i] == "(":
                end = matching(text, i, "(", ")")
                arguments = text[i + 1:end]
                i = end + 1
            variable = re.match(r"\s*var\s+(\w+)", text[i:])
            if not variable:
                continue
            name = variable[1]
            custom = re.search(r'\.customLong\("([^"]+)"\)', arguments)
            long = custom[1] if custom else re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", name).lower()
            flags.add(f"--{long}")
            if ".prefixedNo" in arguments:
                flags.add(f"--no-{long}")
            if ".shortAndLong" in arguments:
                flags.add(f"-{long[0]}")
    return flags


def type_body(text: str, name: str, start: int = 0, end: int | None = None) -> tuple[int, int] | None:
    pattern = re.compile(r"\b(?:struct|class|enum|actor)\s+" + re.escape(name) + r"\b[^{]*\{")
    match = pattern.search(text, start, end if end is not None else len(text))
    if not match:
        return None
    opening = match.end() - 1
    return opening, matching(text, opening, "{", "}")


def public_properties(outer: str | None, name: str) -> list[str] | None:
    for path in swift_sources("Sources"):
        text = path.read_text(encoding="utf-8")
        if outer:
            outer_body = type_body(text, outer)
            if not outer_body:
                continue
            body = type_body(text, name, outer_body[0] + 1, outer_body[1])
        else:
            body = type_body(text, name)
        if not body:
            continue
        # Public properties at the top level of the body (not inside nested braces).
        properties = []
        i, stop = body[0] + 1, body[1]
        while i < stop:
            c = text[i]
            skipped = skip_literal_or_comment(text, i)
            if skipped is not None:
                i = skipped
                continue
            if c in "{(":
                i = matching(text, i, c, "}" if c == "{" else ")") + 1
                continue
            match = re.compile(r"public\s+(?:static\s+)?(?:var|let)\s+(\w+)").match(text, i)
            if match:
                if "static" not in match[0]:
                    properties.append(match[1])
                i = match.end()
                continue
            i += 1
        return properties
    return None


def check_configuration_reference() -> list[str]:
    if not CONFIG_DOC.is_file():
        return [f"{CONFIG_DOC.relative_to(ROOT)} is missing"]
    doc = CONFIG_DOC.read_text(encoding="utf-8")
    relative = CONFIG_DOC.relative_to(ROOT)
    problems = []
    variables = environment_variables()
    for name in sorted(variables):
        if not re.search(r"\b" + re.escape(name) + r"\b", doc):
            problems.append(f"{relative}: environment variable {name} (read by the code) is not documented")
    for name in sorted(set(re.findall(r"\b((?:OTEL|YOMO)_[A-Z0-9_]*[A-Z0-9])\b", doc)) - variables - test_environment_variables()):
        problems.append(f"{relative}: documents {name}, which nothing reads")
    for flag in sorted(command_line_flags()):
        if not re.search(r"`[^`\n]*(?<![\w-])" + re.escape(flag) + r"(?![\w-])[^`\n]*`", doc):
            problems.append(f"{relative}: command-line flag {flag} is not documented")
    for outer, name in CONFIG_TYPES:
        qualified = f"{outer}.{name}" if outer else name
        properties = public_properties(outer, name)
        if properties is None:
            problems.append(f"{Path(__file__).name}: cannot find {qualified} under Sources/ (update CONFIG_TYPES)")
            continue
        for prop in properties:
            if f"`{prop}`" not in doc:
                problems.append(f"{relative}: {qualified}.{prop} is not documented (as `{prop}`)")
    return problems


# --------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="rewrite Examples/DocSamples/ from the docs first")
    parser.add_argument("--no-build", action="store_true", help="skip `swift build --target DocSamples`")
    parser.add_argument("--scratch-path", help="passed to swift build (default: SwiftPM's .build)")
    parser.add_argument("--verbose", action="store_true", help="also list the warnings located in samples")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # keep stdout and stderr in order in CI logs

    failed = False
    try:
        generated, manifests, count = extract()
    except CheckError as error:
        print(f"doc samples:\n{error}", file=sys.stderr)
        return 1
    where = SAMPLES_DIR.relative_to(ROOT)
    if args.update:
        for change in write_files(generated):
            print(f"doc samples: {change}")
    else:
        stale = stale_files(generated)
        if stale:
            print(f"doc samples: {where}/ is not what the docs hold now:", file=sys.stderr)
            for entry in stale:
                print(f"  {entry}", file=sys.stderr)
            print("run scripts/check-doc-samples.py --update (and commit the result)", file=sys.stderr)
            return 1
    print(f"doc samples: {count} ```swift blocks in {len(generated) - 1} files of {where}/"
          + (f", {len(manifests)} Package.swift sample(s)" if manifests else ""))

    problems = check_configuration_reference()
    if problems:
        failed = True
        print("configuration reference:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
    else:
        print(f"configuration reference: {CONFIG_DOC.relative_to(ROOT)} names every variable, flag and option")

    if not args.no_build:
        problems = check_manifests(manifests)
        if problems:
            failed = True
            print("doc samples: Package.swift samples:", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
        elif manifests:
            print(f"doc samples: {len(manifests)} Package.swift sample(s) load and use products this package has")
        if not build(generated, args.scratch_path, args.verbose):
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
