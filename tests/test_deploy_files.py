"""Static checks of the container and deployment files, offline and without a Docker engine.

- Dockerfile: hadolint finds nothing; its stages, user, environment, health check and entry
  point are what the deployment files expect; .dockerignore admits exactly the build inputs,
  and the wheel built from that context (as `pip install .` builds it) holds every file of
  the `service` package.
- docker-compose.yml: valid against the Compose Specification's JSON schema (vendored in
  tests/schemas, see its README), and the stack's wiring: dependencies, health checks, the
  S3 addresses and credentials, one shared environment.
- deploy/kubernetes: every manifest valid against Kubernetes 1.30's schemas in strict mode
  (kubernetes-validate bundles them), and the security, probe and resource settings.

Every command the files run is parsed by the real CLI parser, and every setting they set
must be one the service reads. What no static check can prove: that the image builds and
starts, that SeaweedFS, Postgres and the gateway come up healthy together, or that a cluster
admits the manifests (admission policies, quotas, the Secret's real values).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.cli.command_line import build_parser
from service.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"
S3_IDENTITIES = ROOT / "deploy" / "compose" / "s3.json"
K8S_DIR = ROOT / "deploy" / "kubernetes"
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "schemas" / "compose-spec.json"
# dclint 3.1.0 (npm), package/schemas/compose.schema.json: see tests/schemas/README.md.
COMPOSE_SCHEMA_SHA256 = "46b7d35f19dd93a05f8fea530291bf84d881c1791ec167ecf0e6fb94e639d496"
KUBERNETES_VERSION = "1.30"

BASE_IMAGE = "python:3.11-slim"
APP_UID = 10001
APP_PORT = 8080
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|cc|clang|make|build-essential|python3?-dev|libc6?-dev|apt-get|apt|apk)\b"
)
# Settings the service reads (Settings' fields) and the AWS credential chain's variables.
SETTING_NAMES = frozenset(field.name.upper() for field in fields(Settings))
AWS_CHAIN_NAMES = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"})
DEFAULT_SHUTDOWN_GRACE = Settings().shutdown_grace_seconds


def tool(name: str) -> str:
    """A console script of the test extra: a missing one fails the test, never skips it."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"`{name}` is missing: pip install -e '.[test]'"
    return found


def parses_as_cli(argv: list[str]) -> None:
    """The real parser accepts these arguments (argparse exits 2 on anything else)."""
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # pragma: no cover - the failure path
        pytest.fail(f"attachments-gateway refuses {argv}: exit {exc.code}")


# --- Dockerfile ------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """Logical instructions (continuations joined, comments dropped), grouped by stage."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation"
    stages: list[list[Instruction]] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), " ".join(args.split()))
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, f"{instruction.keyword} before the first FROM"
        stages[-1].append(instruction)
    return stages


def args_of(stage: list[Instruction], keyword: str) -> list[str]:
    return [instruction.args for instruction in stage if instruction.keyword == keyword]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in args_of(stage, "ENV"):
        for token in shlex.split(args):
            name, equals, value = token.partition("=")
            assert equals, f"ENV {args!r}: use the KEY=value form"
            env[name] = value
    return env


def copies_of(stage: list[Instruction]) -> list[tuple[dict[str, str], list[str], str]]:
    """(flags, sources, destination) of each COPY."""
    result = []
    for args in args_of(stage, "COPY"):
        tokens = shlex.split(args)
        flags = dict(t[2:].partition("=")[::2] for t in tokens if t.startswith("--"))
        paths = [t for t in tokens if not t.startswith("--")]
        result.append((flags, paths[:-1], paths[-1]))
    return result


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec (JSON) form: {args!r}"
    return value


@pytest.fixture(scope="module")
def stages() -> list[list[Instruction]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def hadolint(dockerfile: Path, home: Path) -> subprocess.CompletedProcess[str]:
    # The repository's own .hadolint.yaml (if any) applies, a user's global one does not.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    return subprocess.run(
        [tool("hadolint"), "--no-color", "--format", "json", str(dockerfile)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    result = hadolint(DOCKERFILE, tmp_path)
    findings = json.loads(result.stdout or "null")
    assert findings == [], json.dumps(findings, indent=2) + result.stderr
    assert result.returncode == 0, result.stderr


def test_hadolint_really_reports(tmp_path: Path) -> None:
    """Control: the same run on a careless Dockerfile reports the rules we rely on."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\n"
        "RUN apt-get update && apt-get install -y gcc\n"
        "RUN pip install requests\n"
        "ENTRYPOINT attachments-gateway\n"
    )
    result = hadolint(bad, tmp_path)
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert result.returncode != 0
    assert {"DL3007", "DL3008", "DL3013", "DL3042", "DL3025"} <= codes, codes


def test_two_stages_on_the_pinned_base(stages: list[list[Instruction]]) -> None:
    assert len(stages) == 2
    assert stages[0][0].args == f"{BASE_IMAGE} AS builder"
    assert stages[1][0].args == BASE_IMAGE
    for stage in stages:
        assert not args_of(stage, "ARG"), "no build argument may change the base or the build"


def test_builder_makes_a_non_editable_venv(stages: list[list[Instruction]]) -> None:
    runs = " && ".join(args_of(stages[0], "RUN"))
    assert "python -m venv /opt/venv" in runs
    assert re.search(r"\bpip install --no-cache-dir \.(\s|$)", runs), runs
    assert "-e " not in runs and "--editable" not in runs
    assert env_of(stages[0])["PATH"].startswith("/opt/venv/bin:")


def test_final_stage_has_no_build_tools(stages: list[list[Instruction]]) -> None:
    final = stages[1]
    for args in args_of(final, "RUN"):
        assert not BUILD_TOOLS.search(args), f"build tooling in the final stage: {args}"
    from_builder = [(src, dest) for flags, src, dest in copies_of(final) if "from" in flags]
    assert from_builder == [(["/opt/venv"], "/opt/venv")]
    assert (["migrations/"], "/app/migrations/") in [(s, d) for f, s, d in copies_of(final)]


def test_final_stage_environment(stages: list[list[Instruction]]) -> None:
    env = env_of(stages[1])
    assert env["MIGRATIONS_DIR"] == "/app/migrations"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["HOST"] == "0.0.0.0"
    assert env["PORT"] == str(APP_PORT)
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert set(env) - {"PATH"} <= SETTING_NAMES | {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
    # Production may use instance roles: the image must not switch the metadata service off.
    for stage in stages:
        assert "AWS_EC2_METADATA_DISABLED" not in env_of(stage)


def test_final_stage_runs_as_a_fixed_numeric_non_root_user(
    stages: list[list[Instruction]],
) -> None:
    final = stages[1]
    users = args_of(final, "USER")
    assert users, "no USER: the image would run as root"
    assert re.fullmatch(rf"{APP_UID}(:{APP_UID})?", users[-1]), users[-1]
    keywords = [instruction.keyword for instruction in final]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k in ("RUN", "COPY"))
    runs = " ".join(args_of(final, "RUN"))
    assert f"--uid {APP_UID}" in runs and "--no-log-init" in runs
    # compose mounts the seed's named volume at /state: it must belong to that user.
    assert f"chown {APP_UID}:{APP_UID} /state" in runs


def test_final_stage_serves_and_checks_health(stages: list[list[Instruction]]) -> None:
    final = stages[1]
    assert args_of(final, "EXPOSE") == [str(APP_PORT)]
    (healthcheck,) = args_of(final, "HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert exec_form(command) == ["attachments-gateway", "healthcheck"]
    assert "--timeout=" in options and "--interval=" in options
    (entrypoint,) = args_of(final, "ENTRYPOINT")
    (cmd,) = args_of(final, "CMD")
    assert exec_form(entrypoint) == ["attachments-gateway"]
    assert exec_form(cmd) == ["serve"]
    parses_as_cli(exec_form(cmd))
    parses_as_cli(exec_form(command)[1:])


# --- .dockerignore and the build context ---------------------------------------------


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(re-include?, pattern) in order; the last matching rule decides, as in Docker."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = regex.replace(r"\[", "[").replace(r"\]", "]")
        rules.append((negated, re.compile(regex)))
    return rules


def is_excluded(path: str) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, regex in dockerignore_rules():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def build_context_files() -> Iterator[Path]:
    """The files the Docker build context holds: the re-included top-level entries."""
    for negated, regex in dockerignore_rules():
        if not negated:
            continue
        for top in ROOT.iterdir():
            if not regex.fullmatch(top.name):
                continue
            candidates = [top] if top.is_file() else sorted(top.rglob("*"))
            for path in candidates:
                relative = path.relative_to(ROOT).as_posix()
                if path.is_file() and not is_excluded(relative):
                    yield path


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".dev/demo.json",
        ".git/HEAD",
        ".env",
        "tests/test_deploy_files.py",
        ".pytest_cache/v/cache/nodeids",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/content",
        ".hypothesis/examples/x",
        "bench/results/run.json",
        "build/lib/service/cli/command_line.py",
        "attachments_gateway.egg-info/PKG-INFO",
        "service/cli/__pycache__/main.cpython-311.pyc",
        "docker-compose.yml",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert is_excluded(path)


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "service/cli/command_line.py",
        "service/openapi.json",
        "migrations/x.sql",
    ],
)
def test_dockerignore_lets_in(path: str) -> None:
    assert not is_excluded(path)


def test_every_copy_source_is_in_the_build_context(stages: list[list[Instruction]]) -> None:
    for stage in stages:
        for flags, sources, _ in copies_of(stage):
            if "from" in flags:
                continue
            for source in sources:
                assert (ROOT / source).exists(), source
                assert not is_excluded(source.strip("/")), f"{source} is in .dockerignore"


def test_the_wheel_from_the_build_context_holds_the_whole_package(tmp_path: Path) -> None:
    """What `pip install .` gets in the builder stage: data files too (openapi.json)."""
    context = tmp_path / "context"
    for path in build_context_files():
        target = context / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--wheel-dir",
            str(wheels),
            str(context),
        ],
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = wheels.glob("attachments_gateway-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    package = sorted(
        path.relative_to(context).as_posix()
        for path in (context / "service").rglob("*")
        if path.is_file()
    )
    assert "service/cli/command_line.py" in package
    missing = [name for name in package if name not in names]
    assert not missing, f"not in the wheel, so not in the image: {missing}"
    assert re.search(r"^attachments-gateway = service\.cli:main$", scripts, re.MULTILINE)


# --- docker-compose.yml ----------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.Draft7Validator:
    raw = COMPOSE_SCHEMA.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == COMPOSE_SCHEMA_SHA256, "the vendored schema changed"
    schema = json.loads(raw)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator: jsonschema.Draft7Validator, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def test_compose_file_matches_the_compose_spec(
    compose: dict[str, Any], compose_validator: jsonschema.Draft7Validator
) -> None:
    assert schema_errors(compose_validator, compose) == []


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d["services"]["gateway"].update(helthcheck={"test": ["CMD", "true"]}),
        lambda d: d["services"]["gateway"]["depends_on"]["s3"].update(condition="healthy"),
        lambda d: d["services"]["postgres"].update(ports="5432"),
        lambda d: d.update(volume={}),
    ],
    ids=["unknown-key", "bad-condition", "wrong-type", "unknown-top-level"],
)
def test_the_compose_schema_really_rejects(
    compose: dict[str, Any], compose_validator: jsonschema.Draft7Validator, break_it: Any
) -> None:
    broken = copy.deepcopy(compose)
    break_it(broken)
    assert schema_errors(compose_validator, broken)


def test_compose_file_needs_no_interpolation() -> None:
    # Compose would substitute `$...` from the caller's environment (a password with `$`
    # included); the stack must mean the same on every machine.
    assert "$" not in COMPOSE_FILE.read_text()


APP_SERVICES = ("migrate", "seed", "gateway")


def test_app_services_share_one_image_and_one_environment(compose: dict[str, Any]) -> None:
    services = compose["services"]
    environments = [services[name]["environment"] for name in APP_SERVICES]
    assert all(env == environments[0] for env in environments)
    for name in APP_SERVICES:
        assert services[name]["build"] == ".", name
        assert "image" not in services[name], name
    text = COMPOSE_FILE.read_text()
    assert text.count("S3_ENDPOINT_URL:") == 1, "the environment is written once (an anchor)"
    env = environments[0]
    assert set(env) <= SETTING_NAMES | AWS_CHAIN_NAMES | {"AWS_EC2_METADATA_DISABLED"}, set(env)


def test_app_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["seed"]["command"] == ["seed", "--state-file", "/state/demo.json"]
    assert services["gateway"]["command"] == ["serve", "--host", "0.0.0.0", "--port", str(APP_PORT)]
    for name in APP_SERVICES:
        parses_as_cli(services[name]["command"])
    assert "seed-state:/state" in services["seed"]["volumes"]
    assert "seed-state" in compose["volumes"]


def test_dependencies_wait_for_health_and_completion(compose: dict[str, Any]) -> None:
    services = compose["services"]

    def conditions(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert conditions("gateway") == {
        "migrate": "service_completed_successfully",
        "postgres": "service_healthy",
        "s3": "service_healthy",
    }
    assert conditions("seed") == {
        "migrate": "service_completed_successfully",
        "s3": "service_healthy",
    }
    assert conditions("migrate") == {"postgres": "service_healthy"}
    for name, service in services.items():
        for dep, spec in service.get("depends_on", {}).items():
            if spec["condition"] == "service_healthy":
                check = services[dep].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), f"{name} waits on {dep}"
    for one_shot in ("migrate", "seed"):
        assert services[one_shot]["restart"] == "no"
        # The image's HEALTHCHECK probes a server these never start.
        assert services[one_shot]["healthcheck"] == {"disable": True}


def test_gateway_service(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    assert gateway["healthcheck"]["test"] == ["CMD", "attachments-gateway", "healthcheck"]
    assert gateway["ports"] == [f"127.0.0.1:{APP_PORT}:{APP_PORT}"]
    assert seconds(gateway["stop_grace_period"]) > DEFAULT_SHUTDOWN_GRACE
    assert gateway["read_only"] is True and gateway["cap_drop"] == ["ALL"]


def test_gateway_environment(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env = services["gateway"]["environment"]
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    internal, public = urlsplit(env["S3_ENDPOINT_URL"]), urlsplit(env["S3_PUBLIC_ENDPOINT_URL"])
    assert env["S3_PUBLIC_ENDPOINT_URL"] != env["S3_ENDPOINT_URL"]
    assert (internal.scheme, internal.hostname, internal.port) == ("http", "s3", 8333)
    assert (public.scheme, public.hostname) == ("http", "localhost")
    # The public address is the port compose publishes on the host for the S3 container.
    assert f"127.0.0.1:{public.port}:8333" in services["s3"]["ports"]
    assert env["S3_REGION"] == "us-east-1"

    database = urlsplit(env["DATABASE_URL"])
    postgres = services["postgres"]["environment"]
    assert database.scheme == "postgresql" and database.hostname == "postgres"
    assert database.port == 5432
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"]
    assert database.path == "/" + postgres["POSTGRES_DB"]

    identities = json.loads(S3_IDENTITIES.read_text())["identities"]
    matching = [
        identity
        for identity in identities
        for credential in identity["credentials"]
        if credential
        == {"accessKey": env["AWS_ACCESS_KEY_ID"], "secretKey": env["AWS_SECRET_ACCESS_KEY"]}
    ]
    assert len(matching) == 1, "the gateway's keys must be exactly one S3 identity's"
    assert {"Admin", "Read", "Write", "List"} <= set(matching[0]["actions"])
    assert "dev" in env["AWS_ACCESS_KEY_ID"] and "dev" in env["AWS_SECRET_ACCESS_KEY"]


def test_postgres_service(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    repository, _, tag = postgres["image"].partition(":")
    assert repository == "postgres" and re.fullmatch(r"16([.-].*)?", tag), postgres["image"]
    test = postgres["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "pg_isready"
    assert "-U" in test and test[test.index("-U") + 1] == postgres["environment"]["POSTGRES_USER"]
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]
    assert "postgres-data" in compose["volumes"]
    assert "ports" not in postgres, "the dev database is reached through the compose network"


def test_s3_service(compose: dict[str, Any]) -> None:
    s3 = compose["services"]["s3"]
    repository, _, tag = s3["image"].partition(":")
    assert repository == "chrislusf/seaweedfs"
    assert re.fullmatch(r"\d+\.\d+", tag), f"pin a release tag, not {tag!r}"
    command = s3["command"]
    assert command[0] == "server"
    for flag in ("-s3", "-s3.port=8333", "-ip=s3", "-ip.bind=0.0.0.0", "-dir=/data"):
        assert flag in command, flag
    config = next(arg.partition("=")[2] for arg in command if arg.startswith("-s3.config="))
    assert f"./{S3_IDENTITIES.relative_to(ROOT).as_posix()}:{config}:ro" in s3["volumes"]
    assert "s3-data:/data" in s3["volumes"]
    assert "s3-data" in compose["volumes"]
    assert s3["healthcheck"]["test"] == [
        "CMD",
        "wget",
        "-q",
        "-O",
        "/dev/null",
        "http://127.0.0.1:8333/healthz",
    ]


def test_published_ports_are_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} to the LAN"


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    assert match, duration
    return float(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match[2]]


# --- Kubernetes ------------------------------------------------------------------------

MANIFESTS = sorted(
    path.name
    for path in K8S_DIR.glob("*.yaml")
    if path.name != "kustomization.yaml"  # kustomize's own file, no Kubernetes kind
)
# The settings kustomize turns into the ConfigMap (configMapGenerator).
GATEWAY_ENV = K8S_DIR / "gateway.env"
BENCH_RESULTS = ROOT / "bench" / "results" / "latest.json"


def read_env_file(path: Path) -> dict[str, str]:
    """An env file as kustomize reads one: KEY=VALUE lines, `#` comments, no quoting."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, equals, value = line.partition("=")
        assert equals and name == name.strip() and name not in values, line
        assert not value.startswith(("'", '"')), f"kustomize keeps quotes: {line}"
        values[name] = value
    return values


def mebibytes(quantity: str) -> float:
    """A Kubernetes memory quantity in MiB (the suffixes the manifests use)."""
    match = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    assert match, quantity
    return int(match[1]) * {"Mi": 1, "Gi": 1024}[match[2]]


def load_manifest(name: str) -> dict[str, Any]:
    documents = [doc for doc in yaml.safe_load_all((K8S_DIR / name).read_text()) if doc]
    assert len(documents) == 1, f"{name}: one object per file"
    document: dict[str, Any] = documents[0]
    return document


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return {name: load_manifest(name) for name in MANIFESTS}


def test_every_expected_manifest_exists() -> None:
    assert set(MANIFESTS) == {
        "deployment.yaml",
        "hpa.yaml",
        "migrate-job.yaml",
        "pdb.yaml",
        "secret.example.yaml",
        "service.yaml",
    }


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_matches_the_kubernetes_schema(name: str) -> None:
    # Strict: unknown fields are errors. A kind without a schema raises too (no warning).
    kubernetes_validate.validate(load_manifest(name), KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinessProbee={}),
        lambda d: d["spec"].update(replicas="two"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"),
    ],
    ids=["unknown-field", "wrong-type", "missing-required"],
)
def test_the_kubernetes_schema_really_rejects(k8s: dict[str, Any], break_it: Any) -> None:
    broken = copy.deepcopy(k8s["deployment.yaml"])
    break_it(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) == set(MANIFESTS) - {"secret.example.yaml"}
    (image,) = kustomization["images"]
    assert image["name"] == "attachments-gateway"
    assert image["newName"].endswith("/attachments-gateway"), "the registry is set here"
    # A generated ConfigMap's name holds a hash of its content, and the pods refer to it
    # by that name: changed settings roll them (a ConfigMap in envFrom is read at start).
    (generated,) = kustomization["configMapGenerator"]
    assert generated["name"] == "attachments-gateway"
    assert generated["envs"] == [GATEWAY_ENV.name]
    assert generated.get("options", {}).get("disableNameSuffixHash") is not True


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return spec


def assert_locked_down(manifest: dict[str, Any]) -> None:
    spec = pod_spec(manifest)
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == APP_UID
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == APP_UID
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context.get("privileged", False) is False
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), f"{kind} unset"
        # A read-only root needs a writable /tmp.
        tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]]
        assert container["image"].partition(":")[0] == "attachments-gateway"
        envs = container["envFrom"]
        assert {"configMapRef": {"name": "attachments-gateway"}} in envs
        assert {"secretRef": {"name": "attachments-gateway"}} in envs


def probe_path(container: dict[str, Any], probe: str) -> tuple[str, int]:
    http_get = container[probe]["httpGet"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    return http_get["path"], ports.get(http_get["port"], http_get["port"])


def test_deployment(k8s: dict[str, Any]) -> None:
    deployment = k8s["deployment.yaml"]
    # The autoscaler owns the count: one here would be re-applied over it.
    assert "replicas" not in deployment["spec"]
    assert_locked_down(deployment)
    spec = pod_spec(deployment)
    (container,) = spec["containers"]
    assert container["args"] == ["serve", "--host", "0.0.0.0", "--port", str(APP_PORT)]
    parses_as_cli(container["args"])
    assert probe_path(container, "readinessProbe") == ("/readyz", APP_PORT)
    assert probe_path(container, "livenessProbe") == ("/healthz", APP_PORT)
    assert probe_path(container, "startupProbe")[1] == APP_PORT
    # Draining: the preStop pause, then the app's own grace, both within the pod's grace.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and int(pre_stop[1]) > 0
    grace = float(read_env_file(GATEWAY_ENV).get("SHUTDOWN_GRACE_SECONDS", 0))
    grace = grace or DEFAULT_SHUTDOWN_GRACE
    assert spec["terminationGracePeriodSeconds"] > int(pre_stop[1]) + grace
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_deployment_memory_covers_what_a_process_was_measured_to_hold(
    k8s: dict[str, Any],
) -> None:
    """The benchmark's resident size with both caches at their default sizes and 5,000
    idle connections held: the request covers it, and the limit leaves half again on top
    for the audit queue's backlog and the collector's swings (else an OOM kill, and the
    queued audit rows with it)."""
    measured = json.loads(BENCH_RESULTS.read_text())["idle"]["rss_after_mb"]
    (container,) = pod_spec(k8s["deployment.yaml"])["containers"]
    resources = container["resources"]
    assert mebibytes(resources["requests"]["memory"]) >= measured
    assert mebibytes(resources["limits"]["memory"]) >= 1.5 * measured


def test_migrate_job(k8s: dict[str, Any]) -> None:
    job = k8s["migrate-job.yaml"]
    assert_locked_down(job)
    spec = pod_spec(job)
    (container,) = spec["containers"]
    assert container["args"] == ["migrate"]
    parses_as_cli(container["args"])
    assert spec["restartPolicy"] == "Never"
    assert container["image"] == pod_spec(k8s["deployment.yaml"])["containers"][0]["image"]


def test_service_pdb_and_hpa_select_the_gateway_pods(k8s: dict[str, Any]) -> None:
    deployment = k8s["deployment.yaml"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    job_labels = k8s["migrate-job.yaml"]["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    service = k8s["service.yaml"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert not service["selector"].items() <= job_labels.items()
    (port,) = service["ports"]
    container_ports = pod_spec(deployment)["containers"][0]["ports"]
    assert {"name": port["targetPort"], "containerPort": APP_PORT, "protocol": "TCP"} in (
        container_ports
    )

    pdb = k8s["pdb.yaml"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert not pdb["spec"]["selector"]["matchLabels"].items() <= job_labels.items()

    hpa = k8s["hpa.yaml"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"


def test_configmap_and_secret_hold_only_settings_the_service_reads(k8s: dict[str, Any]) -> None:
    config = read_env_file(GATEWAY_ENV)
    secret = k8s["secret.example.yaml"]
    assert secret["metadata"]["name"] == "attachments-gateway"
    assert set(config) <= SETTING_NAMES, set(config) - SETTING_NAMES
    assert set(secret["stringData"]) <= SETTING_NAMES | AWS_CHAIN_NAMES
    # What a pod reads, both together: valid settings, and none half set (REDIS_URL in
    # the Secret with the backend left local started, granting the limits per replica).
    settings = Settings.from_env(config | secret["stringData"])
    assert settings.rate_limit_backend == "redis"
    assert "DATABASE_URL" in secret["stringData"]
    assert not set(config) & {"DATABASE_URL", "REDIS_URL", *AWS_CHAIN_NAMES}, (
        "secrets in a ConfigMap"
    )
    for value in secret["stringData"].values():
        assert "CHANGE-ME" in value, "the example Secret holds placeholders only"
    assert "EXAMPLE" in (K8S_DIR / "secret.example.yaml").read_text().splitlines()[0]


def test_one_port_everywhere(stages: list[list[Instruction]], compose: dict[str, Any]) -> None:
    assert env_of(stages[1])["PORT"] == str(APP_PORT)
    assert args_of(stages[1], "EXPOSE") == [str(APP_PORT)]
    assert compose["services"]["gateway"]["command"][-1] == str(APP_PORT)
    deployment = load_manifest("deployment.yaml")
    assert pod_spec(deployment)["containers"][0]["ports"][0]["containerPort"] == APP_PORT
