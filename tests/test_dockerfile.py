"""Dockerfile and .dockerignore: what the image copies exists and is in the build context, versions and
the base image are pinned, and README.md's docker commands match the Dockerfile. (No docker build here.)"""
from __future__ import annotations

import json
import re
import shlex
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "docker" / "requirements.lock"
TELEMETRY_OFF = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                 "DVC_NO_ANALYTICS": "1"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in (ROOT / "Dockerfile").read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    found = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def arguments(keyword: str) -> list[str]:
    return [rest for key, rest in instructions() if key == keyword]


def build_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in arguments("ARG") if "=" in arg)


def env() -> dict[str, str]:
    pairs = [pair.split("=", 1) for rest in arguments("ENV") for pair in shlex.split(rest)]
    return dict(pairs)


def copy_sources() -> list[str]:
    """Sources of every COPY/ADD from the build context (not --from another stage)."""
    sources = []
    for keyword, rest in instructions():
        if keyword in ("COPY", "ADD"):
            words = shlex.split(rest)
            if any(word.startswith("--from") for word in words):
                continue
            sources += [word for word in words if not word.startswith("--")][:-1]
    return sources


def ignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """(negated, regex) of each .dockerignore line, in order; `*` stays within a path component."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated, line = line.startswith("!"), line.lstrip("!").strip("/")
        tokens = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
        regex = "".join(tokens.get(part) or (part if part.startswith("[") else re.escape(part))
                        for part in re.split(r"(\*\*/|\*\*|\*|\?|\[[^]]*\])", line) if part)
        patterns.append((negated, re.compile(regex)))
    return patterns


def in_context(relative: str) -> bool:
    """Whether .dockerignore keeps `relative` in the build context: the last pattern that matches the
    path or one of its parent folders decides, as Docker does."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    kept = True
    for negated, regex in ignore_patterns():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            kept = negated
    return kept


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            pins[canonicalize_name(name)] = pinned
    return pins


def readme_docker_section() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Docker\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    if match is None:
        pytest.fail("README.md has no '## Docker' section")
    return match.group(1)


def readme_commands(section: str, program: str) -> list[list[str]]:
    """The shell words of every `docker <program>` command in the section's code blocks."""
    blocks = "\n".join(re.findall(r"```(?:bash|sh)?\n(.*?)```", section, flags=re.S))
    commands = re.sub(r"\\\n", " ", blocks).splitlines()
    return [shlex.split(line.split("#")[0]) for line in commands if line.strip().startswith(f"docker {program}")]


# -------------------------------------------------------------------------------------------------------


def test_base_image_is_pinned():
    (base,) = [rest.split()[0] for rest in arguments("FROM")]
    image, _, tag = base.partition(":")
    assert "@sha256:" in base or re.fullmatch(r"\d+\.\d+\.\d+[-\w.]*", tag), f"unpinned base image {base}"
    assert "latest" not in tag
    assert tag.startswith("3.11") or image.startswith("nvidia/cuda"), "Python 3.11 or a CUDA image"


def test_every_copied_file_exists_and_is_in_the_build_context():
    sources = copy_sources()
    assert {"pyproject.toml", "pfgm/", "flows/", "params.yaml", "dvc.yaml", "configs/"} <= set(sources)
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        files = [path] if path.is_file() else [
            p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        missing = [str(p.relative_to(ROOT)) for p in files if not in_context(str(p.relative_to(ROOT)))]
        assert files and not missing, f"COPY {source}: left out by .dockerignore: {missing[:5]}"


def test_the_build_context_leaves_out_what_the_image_must_not_hold():
    for path in (".venv/bin/python", ".git/HEAD", "data/raw/x.png", "models/digits/model.pt", "mlflow.db",
                 "tests/test_configs.py", "pfgm/__pycache__/field.cpython-311.pyc"):
        assert not in_context(path), path


def test_torch_versions_are_pinned_to_the_tested_ones():
    args, pins = build_args(), lock_pins()
    for package, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        assert args[arg] == pins[package] == version(package).split("+")[0], package
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for line in pyproject:  # every dependency pinned, within pyproject's own constraint
        requirement = Requirement(line)
        pinned = pins.get(canonicalize_name(requirement.name))
        assert pinned is not None and requirement.specifier.contains(pinned), f"{line}: lock has {pinned}"


def test_runs_as_a_user_with_telemetry_off():
    (user,) = arguments("USER")
    assert user not in ("root", "0")
    assert {key: env().get(key) for key in TELEMETRY_OFF} == TELEMETRY_OFF


def test_default_command_runs_the_pipeline_on_a_copied_params_file():
    (cmd,) = arguments("CMD")
    command = json.loads(cmd)
    assert command[:3] == ["python", "-m", "flows.pipeline"]
    module = ROOT / "flows" / "pipeline.py"
    params = command[command.index("--params") + 1]
    assert module.is_file() and params in copy_sources() + ["params.yaml"] and (ROOT / params).is_file()


def test_readme_docker_commands_match_the_dockerfile():
    section = readme_docker_section()
    (build,) = readme_commands(section, "build")
    image = build[build.index("-t") + 1]
    assert build[-1] == "."
    runs = readme_commands(section, "run")
    assert runs, "README shows how to run the image"
    workdir = arguments("WORKDIR")[-1]
    volumes = set(json.loads(arguments("VOLUME")[-1]))
    for run in runs:
        assert image in run and "--gpus" in run, run
        mounts = [run[i + 1].split(":")[1] for i, word in enumerate(run) if word == "-v"]
        assert f"{workdir}/data" in mounts and set(mounts) <= volumes | {f"{workdir}/metrics"}, mounts
        after_image = run[run.index(image) + 1:]
        if "--params" in after_image:  # a command instead of the default: a copied config
            assert (ROOT / after_image[after_image.index("--params") + 1]).is_file()
    (cmd,) = arguments("CMD")
    assert " ".join(json.loads(cmd)) in section, "README says what the default command runs"
