"""Each distribution installed as its users install it, in a fresh venv with nothing else.

- `runner-fs` (`pip install .`) on a provisioner's host: the command line, the demo (root, loop
  devices) and the exporter run with no `ops` importable.
- `runner-fs-lib` (lib/) for provisioner charms: installed by the requirement line its header
  gives, a local clone standing in for GitHub, and as the wheel its header builds; it imports
  with only `ops` beside it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from .conftest import write_host_config

REPO = Path(__file__).resolve().parents[2]
CHARM_ONLY = ("ops", "charmhelpers", "charmlibs", "cosl", "jinja2")
HEADER = (REPO / "lib/charms/runner_fs/v0/runner_fs.py").read_text()


def _copy_of_the_work_tree(target: Path) -> Path:
    """Copy the tracked and new files (no venvs, no build output) to `target`."""
    listed = subprocess.run(
        ["git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    for name in filter(None, listed.decode().split("\0")):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


def _venv(path: Path) -> Path:
    """Make a venv with today's pip (the one ensurepip brings may predate git+file URLs)."""
    subprocess.run([sys.executable, "-m", "venv", path], check=True)
    _pip(path / "bin", "--upgrade", "pip")
    return path / "bin"


def _pip(bin_dir: Path, *args: object) -> None:
    subprocess.run(
        [bin_dir / "python", "-m", "pip", "install", "--quiet", *map(str, args)], check=True
    )


def _importable(bin_dir: Path, names: tuple[str, ...]) -> list[str]:
    script = (
        "import importlib.util, sys;"
        "print(','.join(n for n in sys.argv[1:] if importlib.util.find_spec(n)))"
    )
    found = subprocess.run(
        [bin_dir / "python", "-c", script, *names], capture_output=True, text=True, check=True
    ).stdout.strip()
    return found.split(",") if found else []


@pytest.fixture(scope="module")
def host_package(tmp_path_factory) -> Path:
    """Return the bin directory of a fresh venv where `pip install .` installed runner-fs."""
    work = tmp_path_factory.mktemp("host-package")
    source = _copy_of_the_work_tree(work / "source")
    bin_dir = _venv(work / "venv")
    _pip(bin_dir, source)
    return bin_dir


def test_the_host_package_pulls_in_nothing_the_charm_alone_needs(host_package):
    assert _importable(host_package, CHARM_ONLY) == []
    assert _importable(host_package, ("runner_fs", "pydantic", "psycopg")) == [
        "runner_fs",
        "pydantic",
        "psycopg",
    ]


def test_the_host_package_runs_the_command_line_and_the_demo_without_ops(host_package):
    assert subprocess.run([host_package / "runner-fs", "--help"], check=False).returncode == 0

    demo = subprocess.run(
        [host_package / "runner-fs", "demo", "--runners", "4", "--json"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip

    assert demo.returncode == 0, demo.stderr
    assert json.loads(demo.stdout)["reconcile"]["errors"] == 0


def test_the_host_package_serves_metrics_without_ops(host_package, tmp_path):
    config = write_host_config(tmp_path / "config.yaml", tmp_path / "base")
    exporter = subprocess.Popen(
        [host_package / "runner-fs", "--config", config, "serve-metrics", "--port", "0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert exporter.stderr is not None
        line = exporter.stderr.readline()  # the exporter says where it serves once it does
        url = re.search(r"http://\S+/metrics", line)
        assert url, line
        with urllib.request.urlopen(url[0], timeout=30) as response:  # noqa: S310 (http)
            text = response.read().decode()
    finally:
        exporter.terminate()
        exporter.communicate(timeout=30)

    assert "runner_fs_build_info{" in text


def _header_requirement() -> str:
    (line,) = re.findall(r"^\s+(runner-fs-lib @ git\+\S+)$", HEADER, re.M)
    return line


def _header_wheel_command() -> list[str]:
    (line,) = re.findall(r"^\s+(pip wheel .*)$", HEADER, re.M)
    return line.split()


def test_the_library_installs_from_a_tag_as_its_header_says_a_local_clone_standing_in_for_github(
    tmp_path,
):
    requirement = _header_requirement()
    url = re.fullmatch(r"runner-fs-lib @ git\+(\S+)@(\S+)#subdirectory=lib", requirement)
    assert url and url[1] == "https://github.com/canonical/runner-fs", requirement
    clone = _copy_of_the_work_tree(tmp_path / "clone")
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "release"], ["tag", url[2]]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", clone, *command],
            check=True,
        )  # fmt: skip
    bin_dir = _venv(tmp_path / "venv")

    _pip(bin_dir, requirement.replace(url[1], clone.as_uri()))

    assert _library_is_usable(bin_dir)


def test_the_library_wheel_built_as_its_header_says_installs_with_only_ops(tmp_path):
    checkout = _copy_of_the_work_tree(tmp_path / "checkout")
    bin_dir = _venv(tmp_path / "venv")
    pip, wheel, *args = _header_wheel_command()
    assert (pip, wheel) == ("pip", "wheel")
    subprocess.run([bin_dir / "python", "-m", "pip", "wheel", *args], cwd=checkout, check=True)
    (built,) = (checkout / "dist").glob("runner_fs_lib-*.whl")

    _pip(bin_dir, built)

    assert _library_is_usable(bin_dir)


def _library_is_usable(bin_dir: Path) -> bool:
    """Import the library; its version and dependencies are what the header and lib/ say."""
    script = """
import importlib.metadata as metadata
from charms.runner_fs.v0 import runner_fs
assert metadata.version("runner-fs-lib") == f"{runner_fs.LIBAPI}.{runner_fs.LIBPATCH}"
print(metadata.requires("runner-fs-lib"))
"""
    result = subprocess.run(
        [bin_dir / "python", "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['ops>=2']"
    assert _importable(bin_dir, ("runner_fs", "charmhelpers", "cosl", "pydantic")) == []
    return True
