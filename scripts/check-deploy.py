#!/usr/bin/env python3
"""Static checks of deploy/ and dashboards/ (no Docker engine needed).

    python3 scripts/check-deploy.py          # from anywhere; exits 1 on any problem

What it checks, and why each rule exists, is in docs/deployment.md
("How it is checked"). In short:

- deploy/docker-compose.yml: valid against the Compose Specification's JSON
  schema; every file it mounts or builds from exists; images are pinned;
  every program and flag it runs exists in the Swift sources; hosts and ports
  agree with the Jaeger, Prometheus, zipper and Grafana configs; services and
  published ports agree with the table in docs/deployment.md.
- deploy/Dockerfile: parses; its builder installs exactly scripts/setup.sh's
  APT_PACKAGES; builds the programs compose runs; builder and runtime use the
  same Debian release; its .dockerignore lets in every target folder.
- deploy/zipper.yaml: keys and types as ZipperConfiguration reads them.
- deploy/jaeger/config.yaml: pipelines wired; from its spanmetrics connector
  and prometheus exporter, the metric and label names Prometheus will hold.
- the SDK's own metrics: from Sources/YoMo/DataPathMetrics.swift (instrument
  names, units, kinds, attribute keys) and the `component:` attributes
  StreamFunction, Source and Zipper give it, the names /metrics serves, by
  Exposition.swift's rules (reimplemented here); every service run with
  `--metrics` is a Prometheus target and every yomo target such a service.
- dashboards/: every dashboard parses; every data source uid is provisioned;
  every metric and label a PromQL query names (panels, template variables,
  data-source links) is one the span metrics or the SDK's metrics have.
- deploy/prometheus/alerts.yml: prometheus.yml loads it and the compose file
  mounts it beside; every rule has a severity, a summary and a description,
  and every metric and label its expression names is one the SDK has; with
  promtool, `promtool check rules` and the unit tests of alerts_test.yml.

Needs PyYAML, jsonschema and check-jsonschema (whose package carries the
compose-spec schema), and `dockerfile` (BuildKit's own Dockerfile parser):
pip install pyyaml jsonschema check-jsonschema dockerfile. When `promtool` or
a Compose v2 CLI is on PATH it also runs them; otherwise it says it skipped them.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DASHBOARDS = ROOT / "dashboards"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
ZIPPER = DEPLOY / "zipper.yaml"
JAEGER = DEPLOY / "jaeger" / "config.yaml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DOC = ROOT / "docs" / "deployment.md"
SDK_METRICS = ROOT / "Sources" / "YoMo" / "DataPathMetrics.swift"
PROCESS_METRICS = ROOT / "Sources" / "YoMoMetrics" / "ProcessMetrics.swift"
SDK_COMPONENTS = [ROOT / "Sources" / "YoMo" / f"{name}.swift" for name in ("StreamFunction", "Source", "Zipper")]
SETUP = ROOT / "scripts" / "setup.sh"

try:
    import yaml
    import jsonschema
    import dockerfile
    from importlib import resources
    COMPOSE_SCHEMA_TEXT = (resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
except (ImportError, FileNotFoundError, ModuleNotFoundError) as error:
    sys.exit(f"check-deploy: {error}\n  install: python3 -m pip install pyyaml jsonschema check-jsonschema dockerfile")

errors: list[str] = []
notes: list[str] = []
checked = 0


def fail(where: Path | str, message: str) -> None:
    where = where.relative_to(ROOT) if isinstance(where, Path) and where.is_absolute() else where
    errors.append(f"{where}: {message}")


def ok() -> None:
    global checked
    checked += 1


def load_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        fail(path, f"cannot read as YAML: {error}")
        return None


# ---------------------------------------------------------------- the Swift side

def swift_program_flags() -> dict[str, set[str]]:
    """The flags each program that compose may run declares (ArgumentParser
    @Option/@Flag properties), read from the sources: program name -> flags.
    `yomo` is keyed by subcommand, e.g. "yomo serve"."""
    def declarations(text: str):
        # @Option(...) var name / @Flag(...) var name; the arguments may hold
        # closures with parentheses of their own, so match them by depth.
        for match in re.finditer(r"@(Option|Flag)\b", text):
            position, args = match.end(), ""
            if text[position:position + 1] == "(":
                depth = 0
                for end in range(position, len(text)):
                    depth += {"(": 1, ")": -1}.get(text[end], 0)
                    if depth == 0:
                        args, position = text[position:end + 1], end + 1
                        break
            name = re.match(r"\s*var\s+(\w+)", text[position:])
            if name:
                yield match.group(1), args, name.group(1)

    def flags_of(text: str) -> set[str]:
        found = {"--help", "-h"}
        for wrapper, args, name in declarations(text):
            long = "--" + re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()
            found.add(long)
            if ".shortAndLong" in (args or ""):
                found.add("-" + name[0])
            if wrapper == "Flag" and "inversion" in (args or ""):
                found.add("--no-" + long[2:])
        return found

    programs: dict[str, set[str]] = {}
    for main in (ROOT / "Examples").glob("*/main.swift"):
        text = main.read_text()
        name = re.search(r'commandName:\s*"([^"]+)"', text)
        if name:
            programs[name.group(1)] = flags_of(text)
    for source in (ROOT / "Sources" / "YoMoCLI").glob("*.swift"):
        text = source.read_text()
        # Each subcommand is a `struct X: AsyncParsableCommand` up to the next top-level struct.
        for match in re.finditer(r"^struct (\w+): (?:Async)?ParsableCommand \{(.*?)(?=^\S)", text, re.S | re.M):
            body = match.group(2)
            explicit = re.search(r'commandName:\s*"([^"]+)"', body)
            sub = explicit.group(1) if explicit else re.sub(r"(?<!^)(?=[A-Z])", "-", match.group(1)).lower()
            if sub != "yomo":
                programs[f"yomo {sub}"] = flags_of(body)
    return programs


def zipper_keys() -> set[str]:
    """The top-level keys ZipperConfiguration(yaml:) reads."""
    text = (ROOT / "Sources" / "YoMoZipperYAML" / "ZipperConfiguration+YAML.swift").read_text()
    return set(re.findall(r'map\["(\w+)"\]', text))


# ---------------------------------------------------------------- compose

def check_compose_schema(compose: dict) -> None:
    schema = json.loads(COMPOSE_SCHEMA_TEXT)
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)
    problems = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    for problem in problems:
        path = "/".join(str(p) for p in problem.absolute_path) or "(top)"
        fail(COMPOSE, f"not valid Compose: at {path}: {problem.message}")
    if not problems:
        ok()


def check_interpolation(text: str) -> None:
    # `docker compose up` must work with no .env file: every ${VAR} needs a default.
    for match in re.finditer(r"(?<!\$)\$(\{([^}]*)\}|[A-Za-z_]\w*)", text):
        body = match.group(2)
        if body is None or not re.search(r":?[-?]", body):
            fail(COMPOSE, f"{match.group(0)} has no default (use ${{VAR:-default}})")
    ok()


def published_ports(service: dict) -> list[tuple[str, str, str, str]]:
    """(host_ip, published, target, protocol) for each published port."""
    result = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            result.append((str(port.get("host_ip", "")), str(port.get("published", "")),
                           str(port.get("target", "")), port.get("protocol", "tcp")))
            continue
        text, _, protocol = str(port).partition("/")
        parts = text.split(":")
        target = parts[-1]
        published = parts[-2] if len(parts) >= 2 else ""
        host_ip = ":".join(parts[:-2]) if len(parts) >= 3 else ""
        result.append((host_ip, published, target, protocol or "tcp"))
    return result


def volume_sources(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each bind mount."""
    result = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                result.append((volume["source"], volume["target"]))
            continue
        source, _, rest = str(volume).partition(":")
        if source.startswith((".", "/", "~")):
            result.append((source, rest.split(":")[0]))
    return result


def command_of(service: dict) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def option(command: list[str], name: str) -> str | None:
    for i, token in enumerate(command[:-1]):
        if token == name:
            return command[i + 1]
    return None


def check_compose(compose: dict, built_programs: set[str], zipper_config: dict | None,
                  jaeger_ports: dict[str, int], scrape_targets: set[str]) -> dict:
    services: dict = compose.get("services", {})
    programs = swift_program_flags()

    for name, service in services.items():
        where = f"{COMPOSE.relative_to(ROOT)}: service {name}"
        # Files it builds from and mounts, relative to deploy/.
        build = service.get("build")
        if build is not None:
            context = DEPLOY / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile_path = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            if not context.is_dir():
                fail(where, f"build context {context} is not a folder")
            elif not dockerfile_path.is_file():
                fail(where, f"dockerfile {dockerfile_path} does not exist")
            elif dockerfile_path.resolve() != DOCKERFILE.resolve():
                fail(where, f"builds from {dockerfile_path}, expected {DOCKERFILE.relative_to(ROOT)}")
            else:
                ok()
        for source, _ in volume_sources(service):
            if not (DEPLOY / source).exists():
                fail(where, f"mounts {source}, which does not exist (relative to deploy/)")
            else:
                ok()
        # Pinned images: a demo that works today must work the same next month.
        image = service.get("image", "")
        if build is None and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
            fail(where, f"image {image!r} is not pinned to a version")
        # Our programs: built by the Dockerfile, with flags they declare.
        command = command_of(service)
        if build is not None and command:
            program = command[0]
            key = f"yomo {command[1]}" if program == "yomo" and len(command) > 1 else program
            if not built_programs:
                pass  # the Dockerfile's own problem, reported already
            elif program not in built_programs:
                fail(where, f"runs {program}, which deploy/Dockerfile does not build ({sorted(built_programs)})")
            elif key not in programs:
                fail(where, f"runs {key}, which no ArgumentParser command in Sources/YoMoCLI or Examples declares")
            else:
                unknown = [t for t in command if t.startswith("-") and t.split("=")[0] not in programs[key]]
                if unknown:
                    fail(where, f"{key} has no flag {', '.join(unknown)} (it has {', '.join(sorted(programs[key]))})")
                else:
                    ok()
        # Where our programs send traces and find the zipper.
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        endpoint = environment.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if endpoint is not None:
            match = re.fullmatch(r"http://([\w.-]+):(\d+)/?", endpoint)
            if not match or match.group(1) != "jaeger" or int(match.group(2)) != jaeger_ports.get("otlp_http"):
                fail(where, f"OTEL_EXPORTER_OTLP_ENDPOINT={endpoint} is not the jaeger service's OTLP/HTTP "
                            f"port ({jaeger_ports.get('otlp_http')}, deploy/jaeger/config.yaml)")
            else:
                ok()
        zipper_address = option(command, "--zipper")
        if zipper_address is not None and zipper_config is not None:
            host, _, port = zipper_address.rpartition(":")
            zipper_service = services.get(host, {})
            if "serve" not in command_of(zipper_service) or port != str(zipper_config.get("port", 9000)):
                fail(where, f"--zipper {zipper_address} is not the zipper service at zipper.yaml's port")
            else:
                ok()
        # The code-given name wins over OTEL_SERVICE_NAME (docs/tracing.md); keep both equal
        # so Jaeger and the dashboards show the same name whichever way it goes.
        service_name = environment.get("OTEL_SERVICE_NAME")
        given = option(command, "--name")
        if "serve" in command and zipper_config is not None:
            given = zipper_config.get("name", "zipper")
            # What it publishes must be the UDP port zipper.yaml listens on.
            wanted = str(zipper_config.get("port", 9000))
            if "--port" in command or any(t != wanted or p != "udp" for _, _, t, p in published_ports(service)):
                fail(where, f"must listen where zipper.yaml says (no --port) and publish only {wanted}/udp")
            else:
                ok()
        if service_name is not None and given is not None and service_name != given:
            fail(where, f"OTEL_SERVICE_NAME={service_name} but the program is named {given!r}")

    # Everything published on loopback only (docs/deployment.md says why).
    for name, service in services.items():
        for host_ip, published, target, protocol in published_ports(service):
            if host_ip != "127.0.0.1":
                fail(COMPOSE, f"service {name} publishes {published}/{protocol} on {host_ip or 'every interface'}, not 127.0.0.1")
    # Prometheus scrapes every program's --metrics endpoint, and nothing else but Jaeger.
    metrics_targets = {}
    for name, service in services.items():
        listen = option(command_of(service), "--metrics")
        if listen is None:
            continue
        host, _, port = listen.rpartition(":")
        if host != "0.0.0.0" or not port.isdigit():
            fail(COMPOSE, f"service {name}: --metrics {listen} must be 0.0.0.0:<port>: Prometheus connects from another container")
        metrics_targets[f"{name}:{port}"] = name
    for target in sorted(set(metrics_targets) - scrape_targets):
        fail(PROMETHEUS, f"does not scrape {target} (service {metrics_targets[target]} serves /metrics there)")
    for target in sorted(scrape_targets - set(metrics_targets) - {f"jaeger:{jaeger_ports.get('prometheus_exporter')}"}):
        fail(PROMETHEUS, f"scrapes {target}, where no compose service serves metrics (--metrics 0.0.0.0:PORT)")
    if not metrics_targets:
        fail(COMPOSE, "no swift-yomo service serves its metrics (--metrics 0.0.0.0:PORT)")
    else:
        ok()
    # The exemplars the latency panels link to Jaeger with are kept only with this flag.
    if "--enable-feature=exemplar-storage" not in command_of(services.get("prometheus", {})):
        fail(COMPOSE, "service prometheus: needs --enable-feature=exemplar-storage (exemplars link to Jaeger)")
    # Prometheus scrapes the exporter where Jaeger's config puts it.
    expected_target = f"jaeger:{jaeger_ports.get('prometheus_exporter')}"
    if "jaeger" not in services or expected_target not in scrape_targets:
        fail(PROMETHEUS, f"does not scrape {expected_target} (the spanmetrics exporter in deploy/jaeger/config.yaml)")
    else:
        ok()
    return services


def check_ports_table(services: dict) -> None:
    """The table under "## Services and ports" in docs/deployment.md lists each
    service and its published host ports (`16686`, `9000/udp`, or `—`)."""
    if not DOC.is_file():
        fail(DOC, "does not exist")
        return
    lines = DOC.read_text().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if re.match(r"#+\s+Services and ports", line))
    except StopIteration:
        fail(DOC, 'has no "Services and ports" heading with the table of services')
        return
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    if len(rows) < 3:
        fail(DOC, "the Services and ports table is missing")
        return
    header = [cell.lower() for cell in rows[0]]
    try:
        port_column = next(i for i, cell in enumerate(header) if "port" in cell)
    except StopIteration:
        fail(DOC, "the Services and ports table has no ports column")
        return
    image_column = next((i for i, cell in enumerate(header) if "image" in cell), None)
    documented: dict[str, set[str]] = {}
    for row in rows[2:]:
        name = row[0].strip("` ")
        cell = row[port_column] if port_column < len(row) else ""
        documented[name] = {token for token in re.findall(r"[0-9]+(?:/udp|/tcp)?", cell.replace("`", ""))}
        image = re.search(r"`([^`]+)`", row[image_column]) if image_column is not None and image_column < len(row) else None
        if name in services and image and image.group(1) != services[name].get("image"):
            fail(DOC, f"service {name}: the table says image {image.group(1)}, docker-compose.yml runs {services[name].get('image')}")
    actual: dict[str, set[str]] = {}
    for name, service in services.items():
        actual[name] = {published + ("/udp" if protocol == "udp" else "") for _, published, _, protocol in published_ports(service)}
    for name in sorted(set(documented) | set(actual)):
        if name not in actual:
            fail(DOC, f"lists service {name}, which docker-compose.yml does not have")
        elif name not in documented:
            fail(DOC, f"does not list service {name} of docker-compose.yml")
        elif {p.removesuffix("/tcp") for p in documented[name]} != actual[name]:
            fail(DOC, f"service {name}: the table says ports {sorted(documented[name]) or '—'}, "
                      f"docker-compose.yml publishes {sorted(actual[name]) or '—'}")
        else:
            ok()


# ---------------------------------------------------------------- Dockerfile

def shell_words(text: str) -> list[str]:
    return re.findall(r"[^\s]+", text)


def apt_installs(run: str) -> list[str]:
    """Packages of each `apt-get install` in a RUN command (options dropped)."""
    packages = []
    for segment in re.split(r"&&|;|\|\|", run):
        words = shell_words(segment)
        if "apt-get" in words and "install" in words:
            packages += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
    return packages


def setup_apt_packages() -> list[str]:
    text = SETUP.read_text()
    match = re.search(r"^APT_PACKAGES=\((.*?)\)", text, re.S | re.M)
    if not match:
        fail(SETUP, "has no APT_PACKAGES=( ... ) array")
        return []
    body = "\n".join(line.split("#", 1)[0] for line in match.group(1).splitlines())
    return shell_words(body)


def check_dockerfile() -> set[str]:
    """Returns the programs the image contains."""
    try:
        commands = dockerfile.parse_file(str(DOCKERFILE))
    except dockerfile.GoParseError as error:
        fail(DOCKERFILE, f"does not parse: {error}")
        return set()
    known = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
             "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
    for command in commands:
        if command.cmd not in known:
            fail(DOCKERFILE, f"line {command.start_line}: unknown instruction {command.cmd}")
    args = {}
    stages: dict[str, dict] = {}
    current = None
    for command in commands:
        if command.cmd == "ARG" and current is None:
            for value in command.value:
                key, _, default = value.partition("=")
                args[key] = default
        elif command.cmd == "FROM":
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), command.value[0])
            name = command.value[2] if len(command.value) >= 3 and command.value[1].upper() == "AS" else str(len(stages))
            current = stages.setdefault(name, {"image": image, "apt": [], "runs": [], "copies": []})
        elif current is not None and command.cmd == "RUN":
            current["runs"].append(" ".join(command.value))
            current["apt"] += apt_installs(" ".join(command.value))
        elif current is not None and command.cmd == "COPY":
            current["copies"].append(command)
    if "builder" not in stages or "runtime" not in stages:
        fail(DOCKERFILE, f"needs stages named builder and runtime, has {sorted(stages)}")
        return set()
    builder, runtime = stages["builder"], stages["runtime"]
    # The rule: the builder installs exactly the list README's set-up installs, so a
    # library added to one cannot be forgotten in the other.
    wanted = setup_apt_packages()
    duplicates = sorted({p for p in builder["apt"] if builder["apt"].count(p) > 1})
    missing, extra = sorted(set(wanted) - set(builder["apt"])), sorted(set(builder["apt"]) - set(wanted))
    if missing or extra or duplicates:
        fail(DOCKERFILE, "the builder's apt-get install must list exactly scripts/setup.sh's APT_PACKAGES: "
                         f"missing {missing or 'none'}, not in setup.sh {extra or 'none'}, twice {duplicates or 'none'}")
    else:
        ok()
    dev = [p for p in runtime["apt"] if p.endswith("-dev")]
    if dev:
        fail(DOCKERFILE, f"the runtime stage installs build-only packages {dev}")
    # Runtime library package names (libngtcp2-9, ...) are per Debian release.
    releases = {name: re.search(r"(bookworm|trixie|bullseye|jammy|noble)", stage["image"]) for name, stage in stages.items()}
    if not releases["builder"] or not releases["runtime"] or releases["builder"].group(1) != releases["runtime"].group(1):
        fail(DOCKERFILE, f"builder ({builder['image']}) and runtime ({runtime['image']}) must name the same Debian release")
    else:
        ok()
    if not re.search(r"swift:6\.3\b", builder["image"]):
        fail(DOCKERFILE, f"builder image {builder['image']} is not Swift 6.3")
    if not any(c.value[-1].startswith("/usr/local/bin") and any("--from=builder" in f for f in c.flags) for c in runtime["copies"]):
        fail(DOCKERFILE, "the runtime stage does not copy the builder's programs to /usr/local/bin")
    programs = set()
    for run in builder["runs"]:
        loop = re.search(r"for product in ([^;]+);", run)
        if loop and "--static-swift-stdlib" in run:
            programs |= set(loop.group(1).split())
            uncopied = [p for p in loop.group(1).split() if f'"$bin/{p}"' not in run]
            if uncopied:
                fail(DOCKERFILE, f"builds {uncopied} but does not copy them to /out")
    if not programs:
        fail(DOCKERFILE, "builds no products (expected `for product in …; do swift build … --static-swift-stdlib`)")
    # The link order (deploy/text-order/) moves only functions in sections of their own.
    # Cross-module optimization: what the loop benchmarks measure (Benchmarks/loop-common.sh).
    for flag in ("-Xswiftc -Xfrontend -Xswiftc -function-sections", "-Xcc -ffunction-sections", "-Xswiftc -cross-module-optimization"):
        if not any(flag in " ".join(run.split()) for run in builder["runs"]):
            fail(DOCKERFILE, f"the static build does not pass `{flag}` (scripts/static-build.sh does)")
    return programs


def check_zipper_state(services: dict) -> None:
    """The image's user has no home, so yomo serve's default stateless reset key
    needs XDG_STATE_HOME on a directory that user owns, and the compose zipper a
    volume there to keep the key across restarts of its container."""
    try:
        commands = dockerfile.parse_file(str(DOCKERFILE))
    except dockerfile.GoParseError:
        return  # reported by check_dockerfile
    user, state, made = None, None, []
    for command in commands:
        if command.cmd == "FROM":
            user, state, made = None, None, []
        elif command.cmd == "USER":
            user = command.value[0]
        elif command.cmd == "ENV":
            pairs = dict(zip(command.value[::2], command.value[1::2]))
            state = pairs.get("XDG_STATE_HOME", state)
        elif command.cmd == "RUN":
            made += re.findall(r"install -d -o (\S+)(?: -g \S+)?(?: -m \S+)? (\S+)", " ".join(command.value))
    if state is None:
        fail(DOCKERFILE, "the runtime stage sets no XDG_STATE_HOME: yomo serve's reset key needs a writable directory")
        return
    if (user, state) not in made:
        fail(DOCKERFILE, f"XDG_STATE_HOME={state} is not made by `install -d -o {user} … {state}` for USER {user}")
    else:
        ok()
    zippers = [name for name, service in services.items() if "serve" in command_of(service)]
    for name in zippers:
        targets = [str(v).split(":")[1] for v in services[name].get("volumes", []) if not isinstance(v, dict) and ":" in str(v)]
        if state not in targets:
            fail(COMPOSE, f"service {name}: no volume at {state} (XDG_STATE_HOME): its reset key is lost at each restart")
        else:
            ok()


def check_dockerignore() -> None:
    """An allowlist: every folder a target of Package.swift lives in must be let in."""
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    allowed = {line[1:].strip("/") for line in lines if line.startswith("!")}
    if "*" not in lines:
        fail(DOCKERIGNORE, "must start from `*` (an allowlist)")
        return
    manifest = (ROOT / "Package.swift").read_text()
    needed = {"Package.swift", "Sources", "Tests"} | {p.split("/")[0] for p in re.findall(r'path:\s*"([^"]+)"', manifest)}
    # Files the manifest names by path (the link order) must be let in one by one.
    # A path built with an interpolation (the per-program link order) needs its folder.
    for path in re.findall(r'Context\.packageDirectory\)/([^"]+)"', manifest):
        needed.add(path.split("\\(")[0].rstrip("/"))
    for program in re.findall(r'compactExecutable\(order: "([^"]+)"\)', manifest):
        if not (ROOT / "deploy/text-order" / f"{program}.txt").is_file():
            fail(ROOT / "Package.swift", f"links with deploy/text-order/{program}.txt, which does not exist")
    missing = sorted(needed - allowed)
    if missing:
        fail(DOCKERIGNORE, f"keeps {missing} out of the build context, but Package.swift needs them")
    else:
        ok()
    for must in ("**/.build", "**/Package.resolved"):
        if must not in lines:
            fail(DOCKERIGNORE, f"must exclude {must}")


# ---------------------------------------------------------------- zipper

def check_zipper() -> dict | None:
    before = len(errors)
    config = load_yaml(ZIPPER)
    if config is None:
        return None
    if not isinstance(config, dict):
        fail(ZIPPER, "must be a YAML mapping")
        return None
    known = zipper_keys()
    unknown = sorted(set(config) - known)
    if unknown:
        fail(ZIPPER, f"ZipperConfiguration does not read {unknown} (it reads {sorted(known)})")
    for key, kind in (("name", str), ("host", str), ("port", int)):
        if key in config and (not isinstance(config[key], kind) or isinstance(config[key], bool)):
            fail(ZIPPER, f"{key} must be a {kind.__name__}")
    if not 1 <= int(config.get("port", 9000) or 0) <= 65535:
        fail(ZIPPER, "port must be 1-65535")
    if config.get("host") not in ("0.0.0.0", "::"):
        fail(ZIPPER, "host must be 0.0.0.0 (or ::): the default, 127.0.0.1, is unreachable from other containers")
    auth = config.get("auth")
    if auth is not None and (not isinstance(auth, dict) or auth.get("type") != "token" or not auth.get("token")):
        fail(ZIPPER, "auth must be {type: token, token: <non-empty>}")
    if len(errors) == before:
        ok()
    return config


# ---------------------------------------------------------------- Jaeger and what it produces

INTRINSIC_LABELS = {"service_name", "span_name", "span_kind", "status_code"}
# Prometheus adds these to every scraped series.
TARGET_LABELS = {"job", "instance"}
ENUM_VALUES = {
    "span_kind": {"SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT",
                  "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER"},
    "status_code": {"STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"},
}
UNIT_SUFFIX = {"ms": "milliseconds", "s": "seconds"}


def prometheus_name(name: str) -> str:
    # The exporter's UnderscoreEscapingWithSuffixes: anything but [a-zA-Z0-9_:] becomes "_".
    return re.sub(r"_+", "_", re.sub(r"[^a-zA-Z0-9_:]", "_", name))


def check_jaeger() -> tuple[dict[str, set[str]], dict[str, int]]:
    """Returns the series Prometheus will hold (metric -> label names) and the ports."""
    config = load_yaml(JAEGER) or {}
    ports: dict[str, int] = {}
    pipelines = config.get("service", {}).get("pipelines", {})
    kinds = {"receivers": config.get("receivers", {}), "processors": config.get("processors", {}),
             "exporters": config.get("exporters", {})}
    connectors = config.get("connectors", {}) or {}
    for pipeline, spec in pipelines.items():
        for role, defined in kinds.items():
            for component in spec.get(role, []):
                if component not in (defined or {}) and not (role != "processors" and component in connectors):
                    fail(JAEGER, f"pipeline {pipeline} uses {role[:-1]} {component}, which is not defined")
    for extension in config.get("service", {}).get("extensions", []):
        if extension not in (config.get("extensions") or {}):
            fail(JAEGER, f"extension {extension} is enabled but not configured")
    spanmetric_names = [n for n in connectors if n.split("/")[0] == "spanmetrics"]
    if len(spanmetric_names) != 1:
        fail(JAEGER, "needs exactly one spanmetrics connector")
        return {}, ports
    connector_name = spanmetric_names[0]
    traces_in = [p for p, s in pipelines.items() if p.split("/")[0] == "traces" and connector_name in s.get("exporters", [])]
    metrics_out = [p for p, s in pipelines.items() if p.split("/")[0] == "metrics" and connector_name in s.get("receivers", [])]
    exporter_names = [e for p in metrics_out for e in pipelines[p].get("exporters", []) if e.split("/")[0] == "prometheus"]
    if not traces_in or not metrics_out or len(exporter_names) != 1:
        fail(JAEGER, f"{connector_name} must take a traces pipeline's spans and feed one prometheus exporter")
        return {}, ports
    ok()
    connector = connectors[connector_name] or {}
    exporter = kinds["exporters"][exporter_names[0]] or {}
    # Names must not hang on defaults that have changed between releases.
    namespace = connector.get("namespace")
    unit = (connector.get("histogram") or {}).get("unit")
    if not namespace or unit not in UNIT_SUFFIX:
        fail(JAEGER, f"{connector_name}: set namespace and histogram.unit (ms or s) explicitly")
        return {}, ports
    strategy = exporter.get("translation_strategy", "UnderscoreEscapingWithSuffixes")
    if strategy != "UnderscoreEscapingWithSuffixes" or exporter.get("add_metric_suffixes") is False:
        fail(JAEGER, f"prometheus exporter: only translation_strategy UnderscoreEscapingWithSuffixes is understood here")
        return {}, ports
    prefix = prometheus_name(exporter["namespace"]) + "_" if exporter.get("namespace") else ""
    base = prefix + prometheus_name(namespace)
    dimensions = {prometheus_name(d["name"]) for d in connector.get("dimensions", []) or []}
    labels = INTRINSIC_LABELS | dimensions | TARGET_LABELS | set((exporter.get("const_labels") or {}).keys())
    series = {f"{base}_calls_total": labels}
    if not (connector.get("histogram") or {}).get("disable"):
        duration = f"{base}_duration_{UNIT_SUFFIX[unit]}"
        series |= {duration + "_bucket": labels | {"le"}, duration + "_sum": labels, duration + "_count": labels}
    # Jaeger's Monitor tab reads the same series back: its metric store settings must name them.
    query_storage = ((config.get("extensions") or {}).get("jaeger_query") or {}).get("storage", {})
    backends = ((config.get("extensions") or {}).get("jaeger_storage") or {}).get("metric_backends", {}) or {}
    backend = (backends.get(query_storage.get("metrics")) or {}).get("prometheus")
    if backend is None:
        fail(JAEGER, "jaeger_query.storage.metrics must name a prometheus metric backend (the Monitor tab)")
    else:
        expected = {"metric_namespace": base, "latency_unit": unit, "normalize_calls": True, "normalize_duration": True}
        wrong = {k: backend.get(k) for k, v in expected.items() if backend.get(k) != v}
        if wrong:
            fail(JAEGER, f"the metric backend's {wrong} do not match what the connector produces ({expected})")
        elif backend.get("endpoint") != "http://prometheus:9090":
            fail(JAEGER, f"the metric backend queries {backend.get('endpoint')}, not http://prometheus:9090")
        else:
            ok()
    # Ports other files must agree with; 0.0.0.0 because other containers connect.
    http = ((kinds["receivers"].get("otlp") or {}).get("protocols") or {}).get("http") or {}
    for key, endpoint in (("otlp_http", http.get("endpoint", "")), ("prometheus_exporter", exporter.get("endpoint", ""))):
        host, _, port = str(endpoint).rpartition(":")
        if host != "0.0.0.0" or not port.isdigit():
            fail(JAEGER, f"{key} endpoint {endpoint!r} must be 0.0.0.0:<port>: other containers connect to it")
        else:
            ports[key] = int(port)
    return series, ports


def check_alerts(series: dict[str, set[str]], compose: dict) -> None:
    config = load_yaml(PROMETHEUS) or {}
    if "alerts.yml" not in (config.get("rule_files") or []):
        fail(PROMETHEUS, "rule_files does not load alerts.yml")
    else:
        ok()
    prometheus = ((compose or {}).get("services") or {}).get("prometheus") or {}
    if ("./prometheus/alerts.yml", "/etc/prometheus/alerts.yml") not in volume_sources(prometheus):
        fail(COMPOSE, "prometheus does not mount ./prometheus/alerts.yml at /etc/prometheus/alerts.yml (beside its config)")
    else:
        ok()
    rules = load_yaml(ALERTS) or {}
    names = set()
    for group in rules.get("groups", []) or []:
        for rule in group.get("rules", []) or []:
            name = rule.get("alert") or rule.get("record") or "?"
            where = f"{ALERTS.name} {name}"
            if name in names:
                fail(where, "two rules of this name")
            names.add(name)
            if rule.get("alert"):
                missing = [key for key, value in (("labels.severity", (rule.get("labels") or {}).get("severity")),
                                                  ("annotations.summary", (rule.get("annotations") or {}).get("summary")),
                                                  ("annotations.description", (rule.get("annotations") or {}).get("description")))
                           if not value]
                if missing:
                    fail(where, f"has no {', '.join(missing)}")
            check_promql(where, rule.get("expr", ""), series)
    tested = set(re.findall(r"alertname: (\w+)", ALERTS_TEST.read_text()))
    untested = sorted(n for n in names if n not in tested)
    if untested:
        fail(ALERTS_TEST, f"no unit test of {', '.join(untested)}")
    else:
        ok()


def check_prometheus() -> set[str]:
    config = load_yaml(PROMETHEUS) or {}
    targets = set()
    for job in config.get("scrape_configs", []) or []:
        for static in job.get("static_configs", []) or []:
            targets |= set(static.get("targets", []))
    return targets


# ---------------------------------------------------------------- the SDK's own metrics

# Prometheus adds these series to every scrape.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def balanced(text: str, start: int) -> str:
    """The text from the bracket at `start` to its closing bracket, inclusive."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = []
    for end in range(start, len(text)):
        if text[end] in pairs:
            stack.append(pairs[text[end]])
        elif stack and text[end] == stack[-1]:
            stack.pop()
            if not stack:
                return text[start:end + 1]
    raise ValueError(f"unbalanced bracket at {start}")


def otel_prometheus_name(name: str) -> str:
    """PrometheusExposition.sanitize: anything but [a-zA-Z_:] (digits after the
    first character) becomes "_", runs of "_" collapse."""
    name = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
    name = ("_" + name[1:]) if name[:1].isdigit() else name
    return re.sub(r"_+", "_", name)


OTEL_UNIT_SUFFIX = {"1": "ratio", "s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds",
                    "By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes", "%": "percent"}


OTEL_PER_UNIT = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}


def otel_unit_suffix(unit: str) -> str | None:
    """PrometheusExposition.unitSuffix: {annotations} dropped, a rate (By/s) as bytes_per_second."""
    bare = re.sub(r"\{[^}]*\}?", "", unit).strip(" ")
    if "/" in bare:
        left, over = bare.split("/", 1)
        prefix = otel_unit_suffix(left)
        return (prefix + "_" if prefix else "") + "per_" + (OTEL_PER_UNIT.get(over) or otel_prometheus_name(over))
    return (OTEL_UNIT_SUFFIX.get(bare) or otel_prometheus_name(bare)) if bare else None


def otel_metric_name(name: str, unit: str) -> str:
    """PrometheusExposition.metricName: the unit as a suffix."""
    base, suffix = otel_prometheus_name(name), otel_unit_suffix(unit)
    return base + "_" + suffix if suffix and not base.endswith("_" + suffix) else base


def sdk_series() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """The series the SDK's /metrics serves (metric -> labels), read from
    DataPathMetrics.swift, and the values of labels only ever set to literals.

    Instruments: `prop = meter.counter|histogram|upDownCounter("name", unit: "u"`,
    and `meter.observableCounter("name", unit: "u"` with its attributes in the
    closure. A series' attributes: the component's (`component: [...]` where
    StreamFunction, Source and Zipper make their DataPathMetrics, plus what
    `init` adds to it), the `.with("key", …)` inside the `bind(…)`/`add(…)`
    argument, and, when that argument uses a local `attributes`, the keys the
    function's `let attributes = …` adds (through `attributes(tag:)` too); for
    an observed instrument, those in its closure and in the functions of this
    file it calls."""
    text = SDK_METRICS.read_text()
    kinds = {"counter": "counter", "observableCounter": "counter", "histogram": "histogram",
             "upDownCounter": "gauge", "gauge": "gauge", "observableGauge": "gauge"}
    instruments: dict[str, tuple[str, str, str]] = {}   # property (or name) -> (name, unit, kind)
    for match in re.finditer(r'(?:(\w+)\s*=\s*)?meter\.(\w+)\(\s*"([^"]+)"\s*(?:,\s*unit:\s*"([^"]*)")?', text):
        if match.group(2) not in kinds:
            fail(SDK_METRICS, f"meter.{match.group(2)}(…) is not an instrument kind this script knows")
            continue
        instruments[match.group(1) or match.group(3)] = (match.group(3), match.group(4) or "", kinds[match.group(2)])
    if not instruments:
        fail(SDK_METRICS, "no meter.counter/histogram/upDownCounter(\"name\", unit: …) calls found")
        return {}, {}
    with_key = re.compile(r'\.with\(\s*"([^"]+)"\s*,\s*("[^"]*"|[^)]*)\)')
    values: dict[str, set[str]] = {}
    dynamic: set[str] = set()

    def keys_in(fragment: str) -> set[str]:
        found = set()
        for key, value in with_key.findall(fragment):
            found.add(key)
            if value.startswith('"'):
                values.setdefault(key, set()).add(value.strip('"'))
            else:
                dynamic.add(key)
        return found

    # Component attributes: what each component passes, and what init adds (baseAttributes).
    base: set[str] = set()
    for source in SDK_COMPONENTS:
        for match in re.finditer(r"DataPathMetrics\(", source.read_text()):
            call = balanced(source.read_text(), match.end() - 1)
            component = re.search(r"component:\s*\[(.*?)\]", call, re.S)
            if not component:
                fail(source, "DataPathMetrics(…) without a component: [\"key\": …] dictionary")
                continue
            base |= set(re.findall(r'"([^"]+)"\s*:', component.group(1)))
    base_line = re.search(r"baseAttributes\s*=\s*component([^\n]*)", text)
    base |= keys_in(base_line.group(1)) if base_line else set()
    if not base_line:
        fail(SDK_METRICS, "no `baseAttributes = component…` line in init")
    # Functions, by brace depth.
    functions = {}
    for match in re.finditer(r"\bfunc\s+(\w+)\s*\(", text):
        open_brace = text.find("{", match.end() + len(balanced(text, match.end() - 1)) - 1)
        functions.setdefault(match.group(1), []).append(balanced(text, open_brace))
    helper = set().union(*(keys_in(body) for body in functions.get("attributes", [])))
    labels: dict[str, set[str]] = {}
    for name, bodies in functions.items():
        if name == "attributes":
            continue
        for body in bodies:
            local = set()
            for let in re.finditer(r"let attributes\s*=\s*(.*?)(?=\n\s*(?!\.)\S)", body, re.S):
                local |= keys_in(let.group(1)) | (helper if "attributes(tag:" in let.group(1) else set())
            for prop, (metric, _, _) in instruments.items():
                for use in re.finditer(rf"\b{prop}\.(?:bind|add|record)\(", body):
                    argument = balanced(body, use.end() - 1)
                    keys = keys_in(argument) | (local if re.search(r"\battributes\b(?!:)", argument) else set())
                    labels.setdefault(metric, set()).update(keys)
            for call in re.finditer(r"meter\.observable\w+\(\s*\"([^\"]+)\"", body):
                after = call.start() + body[call.start():].index("(")
                after += len(balanced(body, after))
                closure = balanced(body, body.index("{", after))   # the trailing closure
                keys = keys_in(closure)
                # A helper of this file the closure calls (`series { … }`) adds its keys.
                for called in set(re.findall(r"\b(\w+)\s*[({]", closure)) - {name}:
                    for helper_body in functions.get(called, []):
                        keys |= keys_in(helper_body)
                labels.setdefault(call.group(1), set()).update(keys)
    series: dict[str, set[str]] = {}
    for metric, unit, kind in instruments.values():
        if metric not in labels:
            fail(SDK_METRICS, f"instrument {metric} is never recorded with attributes this script can see")
            continue
        names = {otel_prometheus_name(k) for k in labels[metric] | base} | {"otel_scope_name"} | TARGET_LABELS
        prometheus = otel_metric_name(metric, unit)
        if kind == "counter":
            series[prometheus + "_total"] = names
        elif kind == "histogram":
            series |= {prometheus + "_bucket": names | {"le"}, prometheus + "_sum": names, prometheus + "_count": names}
        else:
            series[prometheus] = names
    # The process's own metrics (registered once per program by bootstrap):
    # each instrument, with the attribute keys its closure writes.
    process_text = PROCESS_METRICS.read_text()
    found = 0
    for match in re.finditer(r'meter\.(observableGauge|observableCounter)\(\s*"([^"]+)"\s*,\s*unit:\s*"([^"]*)"', process_text):
        closure = balanced(process_text, process_text.index("{", match.end()))
        keys = set(re.findall(r'\["([a-z_.]+)":', closure))
        name = otel_metric_name(match.group(2), match.group(3)) + ("_total" if match.group(1) == "observableCounter" else "")
        series[name] = {otel_prometheus_name(k) for k in keys} | {"otel_scope_name"} | TARGET_LABELS
        found += 1
    if not found:
        fail(PROCESS_METRICS, "no meter.observableGauge/observableCounter(\"name\", unit: …) calls found")
    # target_info: the resource, for joins by service name.
    series["target_info"] = {"service_name"} | TARGET_LABELS
    for name in SCRAPE_SERIES:
        series[name] = set(TARGET_LABELS)
    enums = {otel_prometheus_name(k): v for k, v in values.items() if k not in dynamic}
    ok()
    return series, enums


# ---------------------------------------------------------------- PromQL

FUNCTIONS = set("""abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp
clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg delta deriv exp
floor histogram_avg histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
histogram_sum holt_winters double_exponential_smoothing hour idelta increase irate label_join label_replace last_over_time ln log10 log2
mad_over_time max_over_time min_over_time minute month pi predict_linear present_over_time quantile_over_time rad
rate resets round scalar sgn sin sinh sort sort_desc sort_by_label sort_by_label_desc sqrt stddev_over_time
stdvar_over_time sum_over_time tan tanh time timestamp vector year""".split())
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                "quantile", "limitk", "limit_ratio"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan", "start", "end"} | GROUPING
TOKEN = re.compile(r"""\s+|(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)|(?P<var>\$\{[^}]*\}|\$\w+)
    |(?P<number>\d[\w.]*|\.\d[\w.]*)|(?P<ident>[a-zA-Z_:][\w:]*)|(?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=@,(){}\[\]])""", re.X)


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(expr):
        match = TOKEN.match(expr, position)
        if not match:
            raise ValueError(f"cannot read {expr[position:position + 20]!r}")
        position = match.end()
        if match.lastgroup:
            tokens.append((match.lastgroup, match.group(match.lastgroup)))
    return tokens


def analyse_promql(expr: str):
    """Metric selectors [(metric, {label: [(op, value)]})] and grouping labels of an expression."""
    tokens = tokenize(expr)
    depth: list[str] = []
    for kind, text in tokens:
        if kind == "op" and text in "([{":
            depth.append({"(": ")", "[": "]", "{": "}"}[text])
        elif kind == "op" and text in ")]}":
            if not depth or depth.pop() != text:
                raise ValueError(f"unbalanced {text}")
    if depth:
        raise ValueError(f"unclosed {depth[-1]!r} expected")
    selectors, grouping, i = [], [], 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else None
        if kind == "ident" and text in GROUPING and following == "(":
            i += 2
            while i < len(tokens) and tokens[i][1] != ")":
                if tokens[i][0] == "ident":
                    grouping.append(tokens[i][1])
                i += 1
        elif kind == "ident" and text not in KEYWORDS and (following == "(" or (text in AGGREGATIONS and following in ("by", "without"))):
            if text not in FUNCTIONS and text not in AGGREGATIONS:
                raise ValueError(f"{text}() is not a PromQL function")
        elif kind == "ident" and text not in KEYWORDS or (kind == "op" and text == "{"):
            metric = text if kind == "ident" else None
            matchers: dict[str, list[tuple[str, str]]] = {}
            if kind == "ident" and following == "{":
                i += 1
            if tokens[i][1] == "{":
                i += 1
                while i < len(tokens) and tokens[i][1] != "}":
                    if tokens[i][0] == "ident" and i + 2 < len(tokens) and tokens[i + 1][0] == "op":
                        value = tokens[i + 2][1]
                        matchers.setdefault(tokens[i][1], []).append((tokens[i + 1][1], value[1:-1] if tokens[i + 2][0] == "string" else value))
                        i += 3
                    else:
                        i += 1
            if metric is None:
                raise ValueError("a selector without a metric name")
            selectors.append((metric, matchers))
        elif kind == "op" and text == "[":
            while i < len(tokens) and tokens[i][1] != "]":
                i += 1
        i += 1
    return selectors, grouping


def check_promql(where: str, expr: str, series: dict[str, set[str]], label_only: str | None = None) -> None:
    expr = expr.replace("${__tags}", "").replace("$__tags", "")
    try:
        selectors, grouping = analyse_promql(expr)
    except ValueError as error:
        fail(where, f"{error} in {expr!r}")
        return
    problems = []
    available: set[str] = set()
    reported: set[str] = set()
    for metric, matchers in selectors:
        if metric not in series:
            near = difflib.get_close_matches(metric, list(series), n=2, cutoff=0.6)
            problems.append(f"metric {metric} is produced neither by the span-metrics pipeline (deploy/jaeger/config.yaml) "
                            f"nor by the SDK (Sources/YoMo/DataPathMetrics.swift)"
                            + (f"; did you mean {' or '.join(near)}?" if near else ""))
            continue
        available |= series[metric]
        for label, conditions in matchers.items():
            if label not in series[metric]:
                problems.append(f"{metric} has no label {label} (it has {', '.join(sorted(series[metric]))})")
                reported.add(label)
            for op, value in conditions:
                if label in ENUM_VALUES and op in ("=", "!=") and value and "$" not in value and value not in ENUM_VALUES[label]:
                    problems.append(f"{label} is never {value!r} (values: {', '.join(sorted(ENUM_VALUES[label]))})")
    unknown_metric = any(metric not in series for metric, _ in selectors)
    for label in grouping + ([label_only] if label_only else []):
        if selectors and not unknown_metric and label not in available and label not in reported:
            problems.append(f"label {label} is on none of {', '.join(sorted({m for m, _ in selectors}))}")
    for problem in dict.fromkeys(problems):   # once each, though two selectors may repeat it
        fail(where, f"{problem}: {expr}")
    if not problems:
        ok()


def grafana_query_text(query) -> str:
    return query.get("query", "") if isinstance(query, dict) else str(query or "")


# ---------------------------------------------------------------- dashboards

def check_dashboards(series: dict[str, set[str]], compose_services: dict) -> list[str]:
    """Returns the PromQL expressions seen (for promtool)."""
    expressions: list[str] = []
    provisioned: dict[str, str] = {}
    for path in sorted((DASHBOARDS / "provisioning" / "datasources").glob("*.y*ml")):
        config = load_yaml(path) or {}
        for source in config.get("datasources", []) or []:
            uid, kind = source.get("uid"), source.get("type")
            if not uid:
                fail(path, f"data source {source.get('name')} has no uid: dashboards could not refer to it")
                continue
            if uid in provisioned:
                fail(path, f"data source uid {uid} twice")
            provisioned[uid] = kind
            match = re.fullmatch(r"https?://([\w.-]+):(\d+)/?", source.get("url", ""))
            if not match or match.group(1) not in compose_services:
                fail(path, f"data source {uid} points at {source.get('url')}, not at a compose service")
            link = (source.get("jsonData") or {}).get("tracesToMetrics") or {}
            for query in link.get("queries", []) or []:
                where = f"{path.relative_to(ROOT)}: {uid} tracesToMetrics {query.get('name')!r}"
                check_promql(where, query.get("query", ""), series)
                expressions.append(query.get("query", "").replace("${__tags}", "").replace("$__tags", ""))
            for tag in link.get("tags", []) or []:
                label = tag.get("value") or tag.get("key")
                if label not in set().union(*series.values()):
                    fail(path, f"{uid} tracesToMetrics maps a span tag to label {label}, which no span metric has")
            destinations = (source.get("jsonData") or {}).get("exemplarTraceIdDestinations", []) or []
            if kind == "prometheus" and not any(d.get("name") == "trace_id" and d.get("datasourceUid") for d in destinations):
                # Both the spanmetrics connector and the SDK name the exemplar's label trace_id.
                fail(path, f"{uid}: exemplarTraceIdDestinations has no trace_id → Jaeger link, so exemplars link nowhere")
            for destination in destinations:
                if destination.get("datasourceUid") and destination["datasourceUid"] not in {s.get("uid") for s in config["datasources"]}:
                    fail(path, f"{uid} sends exemplars to unknown data source {destination['datasourceUid']}")
    if not provisioned:
        fail(DASHBOARDS / "provisioning" / "datasources", "provisions no data source")
    # The dashboard provider reads the folder compose mounts dashboards/json at.
    mounts = {target: source for source, target in volume_sources(compose_services.get("grafana", {}))}
    provider_paths = set()
    for path in sorted((DASHBOARDS / "provisioning" / "dashboards").glob("*.y*ml")):
        for provider in (load_yaml(path) or {}).get("providers", []) or []:
            provider_paths.add((provider.get("options") or {}).get("path"))
    dashboards = sorted((DASHBOARDS / "json").glob("*.json"))
    for provider_path in provider_paths:
        if mounts.get(provider_path) != "../dashboards/json":
            fail(DASHBOARDS / "provisioning" / "dashboards", f"provider path {provider_path} is not where compose mounts ../dashboards/json")
    home = (compose_services.get("grafana", {}).get("environment") or {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home and not (home.startswith(tuple(provider_paths)) and (DASHBOARDS / "json" / Path(home).name).is_file()):
        fail(COMPOSE, f"GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH {home} is not a dashboard in dashboards/json")
    if not dashboards:
        fail(DASHBOARDS / "json", "holds no dashboard")
    uids = set()
    for path in dashboards:
        try:
            board = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            fail(path, f"is not JSON: {error}")
            continue
        name = path.relative_to(ROOT)
        if not board.get("uid") or board["uid"] in uids:
            fail(path, "needs a uid of its own (links and the provider key on it)")
        uids.add(board.get("uid"))
        variables = {v.get("name") for v in (board.get("templating") or {}).get("list", [])}

        def check_source(where: str, source) -> str | None:
            if isinstance(source, str):
                fail(where, f"data source given by name {source!r}; use {{type, uid}}")
                return None
            uid = (source or {}).get("uid")
            if uid is None:
                fail(where, f"no data source uid")
            elif uid not in provisioned:
                fail(where, f"data source uid {uid!r} is not provisioned ({', '.join(sorted(provisioned))})")
            elif source.get("type") and source["type"] != provisioned[uid]:
                fail(where, f"data source {uid} has type {provisioned[uid]}, not {source['type']}")
            else:
                ok()
                return provisioned[uid]
            return None

        def used_variables(where: str, text: str) -> None:
            for used in re.findall(r"\$\{?(\w+)", text):
                if not used.startswith("__") and used not in variables:
                    fail(where, f"${used} is not a template variable of this dashboard")

        for variable in (board.get("templating") or {}).get("list", []):
            if variable.get("type") != "query":
                continue
            where = f"{name}: variable {variable.get('name')}"
            if check_source(where, variable.get("datasource")) != "prometheus":
                continue
            query = grafana_query_text(variable.get("query"))
            match = re.fullmatch(r"\s*label_values\((?:(.*),)?\s*(\w+)\s*\)\s*", query, re.S)
            if not match:
                fail(where, f"only label_values(...) queries are checked, not {query!r}")
                continue
            if match.group(1):
                check_promql(where, match.group(1), series, label_only=match.group(2))
                expressions.append(match.group(1))
            elif match.group(2) not in set().union(*series.values()):
                fail(where, f"no span metric has label {match.group(2)}")
            used_variables(where, query)

        def panels_of(items):
            for panel in items:
                yield panel
                yield from panels_of(panel.get("panels", []))

        for panel in panels_of(board.get("panels", [])):
            if panel.get("type") == "row":
                continue
            where = f"{name}: panel {panel.get('title')!r}"
            panel_kind = check_source(where, panel.get("datasource"))
            used_variables(where, panel.get("title", ""))
            if not panel.get("targets"):
                fail(where, "has no query")
            for target in panel.get("targets", []):
                kind = check_source(f"{where} query {target.get('refId')}", target.get("datasource") or panel.get("datasource"))
                if kind != panel_kind and panel_kind != "datasource":
                    fail(where, f"query {target.get('refId')} uses another data source than its panel")
                if kind == "prometheus":
                    check_promql(f"{where} query {target.get('refId')}", target.get("expr", ""), series)
                    expressions.append(target.get("expr", ""))
                    used_variables(where, target.get("expr", "") + target.get("legendFormat", ""))
                elif kind == "jaeger":
                    if target.get("queryType") not in ("search", "dependencyGraph", None) or (target.get("queryType") == "search" and not target.get("service")):
                        fail(where, "a Jaeger query needs queryType search and a service")
                    used_variables(where, json.dumps(target))
    return expressions


# ---------------------------------------------------------------- optional tools

def grafana_to_promql(expr: str) -> str:
    """What Grafana would send: its interval macros and variables filled in."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "1m", expr)
    return re.sub(r"\$\{?\w+(?::\w+)?\}?", ".*", expr)


def run_optional_tools(expressions: list[str]) -> None:
    promtool = shutil.which("promtool")
    if promtool:
        result = subprocess.run([promtool, "check", "config", "--syntax-only", str(PROMETHEUS)], capture_output=True, text=True)
        if result.returncode != 0:
            fail(PROMETHEUS, "promtool check config: " + (result.stderr or result.stdout).strip())
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as rules:
            rules.write(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": [
                {"record": f"dashboard:expr{i}", "expr": grafana_to_promql(e)} for i, e in enumerate(expressions)]}]}))
        result = subprocess.run([promtool, "check", "rules", rules.name], capture_output=True, text=True)
        os.unlink(rules.name)
        if result.returncode != 0:
            fail("dashboards", "promtool finds PromQL it cannot parse: " + (result.stderr or result.stdout).strip())
        else:
            ok()
        for command in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERTS_TEST)]):
            result = subprocess.run([promtool] + command, capture_output=True, text=True, cwd=ALERTS.parent)
            if result.returncode != 0:
                fail(ALERTS, f"promtool {' '.join(command[:2])}: " + (result.stdout + result.stderr).strip())
            else:
                ok()
        notes.append(f"promtool: checked prometheus.yml, the syntax of {len(expressions)} PromQL expressions, "
                     "and alerts.yml against its unit tests")
    else:
        notes.append("promtool not on PATH: PromQL syntax checked by this script's own reader only")
    for cli in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cli[0]):
            version = subprocess.run(cli + ["version", "--short"], capture_output=True, text=True)
            if version.returncode == 0 and version.stdout.strip().lstrip("v").startswith("2"):
                result = subprocess.run(cli + ["-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, cwd=ROOT)
                if result.returncode != 0:
                    fail(COMPOSE, f"{' '.join(cli)} config: {result.stderr.strip()}")
                else:
                    ok()
                notes.append(f"{' '.join(cli)} {version.stdout.strip()}: `config` accepts the compose file")
                break
    else:
        notes.append("no Compose v2 CLI on PATH: the compose file checked against the schema only")


# ---------------------------------------------------------------- main

def main() -> int:
    compose_text = COMPOSE.read_text()
    compose = load_yaml(COMPOSE)
    if not isinstance(compose, dict):
        fail(COMPOSE, "is not a YAML mapping")
    else:
        check_compose_schema(compose)
        check_interpolation(compose_text)
    built = check_dockerfile()
    check_dockerignore()
    zipper_config = check_zipper()
    series, jaeger_ports = check_jaeger()
    sdk, sdk_values = sdk_series()
    ENUM_VALUES.update(sdk_values)
    ENUM_VALUES["job"] = {job.get("job_name") for job in (load_yaml(PROMETHEUS) or {}).get("scrape_configs", []) or []}
    scrape_targets = check_prometheus()
    services = {}
    if isinstance(compose, dict):
        services = check_compose(compose, built, zipper_config, jaeger_ports, scrape_targets)
        check_ports_table(services)
        check_zipper_state(services)
    # A query may name what either pipeline produces; the names do not overlap.
    overlap = set(series) & set(sdk)
    if overlap:
        fail(JAEGER, f"span metrics and SDK metrics share names {sorted(overlap)}")
    expressions = check_dashboards(series | sdk, services) if series and sdk else []
    if sdk:
        check_alerts(sdk, compose if isinstance(compose, dict) else {})
    if not errors:
        run_optional_tools(expressions)
    for note in notes:
        print(f"check-deploy: note: {note}")
    if errors:
        for error in errors:
            print(f"check-deploy: FAIL {error}", file=sys.stderr)
        print(f"check-deploy: {checked} passed, {len(errors)} failed", file=sys.stderr)
        return 1
    names = ", ".join(sorted(series))
    print(f"check-deploy: span metrics: {names}")
    print(f"check-deploy: SDK metrics: {', '.join(sorted(n for n in sdk if n not in SCRAPE_SERIES))}")
    print(f"check-deploy: {checked} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
