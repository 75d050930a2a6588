"""requirements.lock (the image's runtime dependencies, pinned with their hashes) agrees with
setup.cfg, and the Dockerfile installs from it and nothing else. (`make lock-check`, run by CI,
installs it into a fresh venv as the Dockerfile does and imports the service.)"""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
DIRECT = "kpi-service (setup.cfg)"


def install_requires() -> list[Requirement]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    return [Requirement(line.strip()) for line in lines if line.strip() and not line.strip().startswith("#")]


def lock() -> dict[str, dict]:
    """name -> {version, hashes, via} of each pin in requirements.lock."""
    pins: dict[str, dict] = {}
    current: dict | None = None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = {"version": match[2], "hashes": [], "via": set()}
            pins[canonicalize_name(match[1])] = current
        elif current is not None and line.strip().startswith("--hash=sha256:"):
            current["hashes"].append(line.strip().split(":", 1)[1].rstrip(" \\"))
        elif current is not None and line.strip().startswith("#"):
            via = line.strip("# ").removeprefix("via").strip()
            if via:
                current["via"].add(via)
    return pins


def test_every_requirement_of_setup_cfg_is_pinned_within_its_range() -> None:
    pins = lock()
    for requirement in install_requires():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock: run make lock"
        assert requirement.specifier.contains(pins[name]["version"], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]['version']}, outside setup.cfg's {requirement}: run make lock"
        )
        for extra in requirement.extras:  # psycopg[binary]: its extra's package is pinned too
            assert canonicalize_name(f"{requirement.name}-{extra}") in pins, f"{requirement}: run make lock"


def test_the_lock_pins_nothing_setup_cfg_no_longer_requires() -> None:
    direct = {name for name, pin in lock().items() if DIRECT in pin["via"]}
    assert direct == {canonicalize_name(r.name) for r in install_requires()}, "run make lock"


def test_every_pin_has_its_hashes() -> None:
    pins = lock()
    assert len(pins) > len(install_requires())  # the transitive ones too
    for name, pin in pins.items():
        assert pin["hashes"], f"{name} has no hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in pin["hashes"]), name


def test_the_dockerfile_installs_the_lock_with_hashes_then_the_package_alone() -> None:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    runs = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("RUN ")]
    installs = [shlex.split(part) for run in runs for part in run.split("&&") if re.search(r"\bpip install\b", part)]
    assert installs == [
        ["pip", "install", "--require-hashes", "-r", "requirements.lock"],
        ["pip", "install", "--no-deps", "."],
    ]
    # The lock is in the image before it is installed from.
    assert text.index("COPY requirements.lock") < text.index("--require-hashes")
