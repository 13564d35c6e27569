"""Each packed `.charm` carries a venv that its base's own Python can use.

Ubuntu 22.04 runs CPython 3.10 on glibc 2.35, 24.04 runs 3.12 on glibc 2.39; neither can be
installed on this machine, so the venv is judged by what pip on that base would accept: the
tags of every wheel (packaging's tag sets for that interpreter and glibc), the tag of every
extension module, the `lib/pythonX.Y` directory and `pyvenv.cfg`, and the lock's pins.
"""

from __future__ import annotations

import re
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging import tags
from packaging.markers import Marker
from packaging.requirements import Requirement

from .machine_world import PACK_VENV

REPO = Path(__file__).resolve().parents[2]
BASES = {"22.04": ((3, 10), (2, 35)), "24.04": ((3, 12), (2, 39))}  # CPython, glibc
ARCH = "x86_64"


def supported_tags(python: tuple[int, int], glibc: tuple[int, int]) -> set[tags.Tag]:
    """Return the wheel tags pip accepts on CPython `python` over glibc `glibc` (x86_64)."""
    major, minor = glibc
    platforms = [f"manylinux_{major}_{m}_{ARCH}" for m in range(minor, 4, -1)]
    platforms += [f"manylinux{legacy}_{ARCH}" for legacy in ("2014", "2010", "1")]
    abi = f"cp{python[0]}{python[1]}"
    return {
        *tags.cpython_tags(python, [abi, "abi3", "none"], platforms),
        *tags.compatible_tags(python, abi, platforms),
    }


def problems(charm: Path) -> list[str]:
    """Say everything in `charm`'s venv that its base's Python could not use."""
    with zipfile.ZipFile(charm) as archive:
        return _problems(archive)


def _problems(archive: zipfile.ZipFile) -> list[str]:
    names = archive.namelist()
    channel = yaml.safe_load(archive.read("manifest.yaml"))["bases"][0]["channel"]
    python, glibc = BASES[channel]
    version = f"{python[0]}.{python[1]}"
    found = []
    libs = {name.split("/")[2] for name in names if name.startswith("venv/lib/")}
    if libs != {f"python{version}"}:
        found.append(f"venv/lib holds {sorted(libs)}, not python{version}")
    config = dict(
        line.split(" = ", 1) for line in archive.read("venv/pyvenv.cfg").decode().splitlines()
    )
    said = config.get("version_info", "")
    if said != version and not said.startswith(f"{version}."):
        found.append(f"pyvenv.cfg says version_info {said!r}, not {version}")
    suffix = re.compile(rf"\.(cpython-{python[0]}{python[1]}-{ARCH}-linux-gnu|abi3)\.so$")
    found += [
        f"{name}: not an extension for CPython {version}"
        for name in names
        if name.endswith(".so") and ".libs/" not in name and not suffix.search(name)
    ]
    accepted = supported_tags(python, glibc)
    for name in names:
        if name.endswith(".dist-info/WHEEL"):
            lines = archive.read(name).decode().splitlines()
            wheel_tags = {
                tag for line in lines if line.startswith("Tag: ")
                for tag in tags.parse_tag(line.removeprefix("Tag: "))
            }  # fmt: skip
            if not wheel_tags & accepted:
                found.append(f"{name}: {sorted(map(str, wheel_tags))} not for {channel}")
    return found


def carried(charm: Path) -> dict[str, str]:
    """Return the distributions in `charm`'s venv: normalised name to version."""
    found = {}
    with zipfile.ZipFile(charm) as archive:
        names = archive.namelist()
    for name in names:
        match = re.search(r"/site-packages/([^/]+)-([^-/]+)\.dist-info/METADATA$", name)
        if match:
            found[match[1].lower().replace("_", "-")] = match[2]
    return found


def locked(python: tuple[int, int]) -> dict[str, str]:
    """Return what uv.lock pins for the charm on Linux with CPython `python`."""
    exported = subprocess.run(
        [PACK_VENV / "bin/uv", "export", "--project", REPO, "--frozen", "--no-default-groups",
         "--group", "charm", "--no-emit-project", "--no-hashes", "--format", "requirements-txt"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    environment = {"python_version": f"{python[0]}.{python[1]}", "sys_platform": "linux",
                   "implementation_name": "cpython", "platform_machine": ARCH}  # fmt: skip
    pins = {}
    for line in exported.splitlines():
        if line and not line.startswith(("#", " ")):
            requirement = Requirement(line)
            marker = requirement.marker or Marker("python_version >= '3'")
            if marker.evaluate(environment):
                pins[requirement.name.lower()] = str(requirement.specifier).removeprefix("==")
    return pins


def test_every_packed_charm_carries_a_venv_for_its_bases_python_and_glibc(packed):
    assert {charm.name for charm in packed.values()} == {
        "runner-fs_ubuntu@24.04-amd64.charm", "runner-fs_ubuntu@22.04-amd64.charm"
    }  # fmt: skip
    for charm in packed.values():
        assert problems(charm) == [], charm.name


def test_every_packed_charm_carries_its_icon_and_the_library_without_lib_packaging(packed):
    for charm in packed.values():
        with zipfile.ZipFile(charm) as archive:
            names = set(archive.namelist())
            assert archive.read("icon.svg") == (REPO / "icon.svg").read_bytes(), charm.name
        assert "lib/charms/runner_fs/v0/runner_fs.py" in names, charm.name
        assert "lib/pyproject.toml" not in names, charm.name


def test_every_packed_venv_holds_exactly_the_locked_distributions(packed):
    for platform, charm in packed.items():
        python = BASES[platform.split("@")[1].split("-")[0]][0]
        assert carried(charm) == locked(python), charm.name


@pytest.mark.parametrize(
    ("wheel_tag", "channel", "accepted"),
    [
        ("cp312-cp312-manylinux_2_17_x86_64", "24.04", True),
        ("cp312-cp312-manylinux_2_39_x86_64", "24.04", True),
        ("cp312-cp312-manylinux_2_40_x86_64", "24.04", False),  # newer glibc than noble's
        ("cp311-cp311-manylinux_2_17_x86_64", "24.04", False),  # this build host's Python
        ("cp39-abi3-manylinux_2_17_x86_64", "22.04", True),
        ("cp310-cp310-manylinux_2_36_x86_64", "22.04", False),  # newer glibc than jammy's
        ("py3-none-any", "22.04", True),
        ("cp310-cp310-linux_x86_64", "22.04", False),  # a local build, no manylinux promise
    ],
)
def test_the_tag_judge_accepts_what_pip_on_the_base_would(wheel_tag, channel, accepted):
    judged = bool(set(tags.parse_tag(wheel_tag)) & supported_tags(*BASES[channel]))

    assert judged is accepted
