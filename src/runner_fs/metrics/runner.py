"""Read and validate the metric files an untrusted runner wrote into its filesystem.

Every file is opened relative to the filesystem's directory without following links, only if
it is a regular file, and read with a bound; anything else is a `CorruptMetricDataError`
naming the file and the rule, quoting at most a short escaped excerpt.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from runner_fs.errors import CorruptMetricDataError

INSTALLATION_START_FILE = "runner-installation-start.timestamp"
INSTALLED_FILE = "runner-installed.timestamp"
PRE_JOB_FILE = "pre-job-metrics.json"
POST_JOB_FILE = "post-job-metrics.json"
METRIC_FILES = (INSTALLATION_START_FILE, INSTALLED_FILE, PRE_JOB_FILE, POST_JOB_FILE)
MAX_FILE_SIZE = 1024
MAX_DEPTH = 4  # nesting of JSON arrays and objects; the files need 2
MAX_DIGITS = 20  # of a JSON number literal: every int64 fits, nothing overflows a float
EARLIEST_TIMESTAMP = 1420070400.0  # 2015-01-01T00:00:00Z
FUTURE_SLACK = 24 * 3600.0
CLOCK_SKEW = 600.0  # seconds a runner's clock may differ from the host's
EXIT_CODE = (-(2**31), 2**31 - 1)  # the range of `status_info.code`
_NUMBER = re.compile(r"\s*\d{1,12}(\.\d{1,9})?\s*")
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symlink",
    stat.S_IFCHR: "a device node",
    stat.S_IFBLK: "a device node",
    stat.S_IFSOCK: "a socket",
}


def _plausible(timestamp: float) -> float:
    try:
        finite = math.isfinite(timestamp)
    except OverflowError:
        finite = False
    if not finite:
        raise ValueError("must be a finite number")
    if timestamp < EARLIEST_TIMESTAMP:
        raise ValueError("is before 2015-01-01")
    if timestamp > time.time() + FUTURE_SLACK:
        raise ValueError("is more than 24 hours ahead of the host clock")
    return float(timestamp)


def _int_as_str(value: object) -> object:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Timestamp = Annotated[StrictFloat | StrictInt, AfterValidator(_plausible)]
ShortStr = Annotated[StrictStr, AfterValidator(lambda v: _bounded(v, 256))]
RunId = Annotated[
    StrictStr, BeforeValidator(_int_as_str), AfterValidator(lambda v: _bounded(v, 64))
]


def _bounded(value: str, limit: int) -> str:
    if len(value) > limit or not value.isprintable():
        raise ValueError(f"must be at most {limit} printable characters")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def _repository(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}", value):
        raise ValueError("must look like owner/repo")
    return value


_ModelT = TypeVar("_ModelT", bound=_Strict)


class PreJobMetrics(_Strict):
    """What the runner wrote when its job started."""

    timestamp: Timestamp
    workflow: ShortStr
    workflow_run_id: RunId
    repository: Annotated[StrictStr, AfterValidator(_repository)] | None = None
    event: ShortStr


class StatusInfo(_Strict):
    """Details of an abnormal end."""

    code: Annotated[StrictInt, Field(ge=EXIT_CODE[0], le=EXIT_CODE[1])]


class PostJobMetrics(_Strict):
    """What the runner wrote when its job ended."""

    timestamp: Timestamp
    status: Literal["normal", "abnormal", "repo-policy-check-failure"]
    status_info: StatusInfo | None = None


class RunnerMetrics(_Strict):
    """Everything one runner reported, validated."""

    installation_start: float | None
    installed: float
    pre_job: PreJobMetrics | None
    post_job: PostJobMetrics | None


def read_runner_metrics(
    directory: Path,
    max_size: int = MAX_FILE_SIZE,
    window: tuple[float, float] | None = None,
) -> RunnerMetrics | None:
    """Read and validate a runner's metric files.

    Args:
        directory: the runner's filesystem (its mount point).
        max_size: the most bytes a metric file may hold.
        window: the Unix times every timestamp must lie between (the filesystem's creation
            and the harvest's time, each widened by `CLOCK_SKEW`).

    Returns:
        The metrics, or None when the runner never finished installing (nothing to harvest).

    Raises:
        CorruptMetricDataError: a file is not a small regular UTF-8 file of the right form,
            or a timestamp lies outside `window`.
    """
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        texts = {name: _read_bounded(dir_fd, name, max_size) for name in METRIC_FILES}
    finally:
        os.close(dir_fd)
    installed = _timestamp(INSTALLED_FILE, texts[INSTALLED_FILE])
    if installed is None:
        return None
    metrics = RunnerMetrics(
        installation_start=_timestamp(INSTALLATION_START_FILE, texts[INSTALLATION_START_FILE]),
        installed=installed,
        pre_job=_model(PreJobMetrics, PRE_JOB_FILE, texts[PRE_JOB_FILE]),
        post_job=_model(PostJobMetrics, POST_JOB_FILE, texts[POST_JOB_FILE]),
    )
    if window is not None:
        _check_window(metrics, *window)
    return metrics


def _check_window(metrics: RunnerMetrics, earliest: float, latest: float) -> None:
    """Refuse a timestamp from before the filesystem existed or after the harvest."""
    stamps = {
        INSTALLATION_START_FILE: metrics.installation_start,
        INSTALLED_FILE: metrics.installed,
        PRE_JOB_FILE: metrics.pre_job.timestamp if metrics.pre_job else None,
        POST_JOB_FILE: metrics.post_job.timestamp if metrics.post_job else None,
    }
    for name, stamp in stamps.items():
        if stamp is not None and stamp < earliest:
            raise CorruptMetricDataError(
                f"{name}: timestamp {stamp:.0f} is before the filesystem was created"
                f" ({earliest + CLOCK_SKEW:.0f}, less {CLOCK_SKEW:.0f} s of clock skew)"
            )
        if stamp is not None and stamp > latest:
            raise CorruptMetricDataError(
                f"{name}: timestamp {stamp:.0f} is after the harvest"
                f" ({latest - CLOCK_SKEW:.0f}, plus {CLOCK_SKEW:.0f} s of clock skew)"
            )


def apply_labels(metrics: RunnerMetrics, labels: Mapping[str, str]) -> RunnerMetrics:
    """Hold the runner's repository to the provisioner's `repository` or `owner` label.

    The provisioner's label is trusted, the runner's file is not: a repository that does not
    match is refused, and the `repository` label is what gets stored.

    Raises:
        CorruptMetricDataError: the runner claims another repository or owner.
    """
    repository, owner = labels.get("repository"), labels.get("owner")
    pre = metrics.pre_job
    if pre is None or not (repository or owner):
        return metrics
    claimed = pre.repository
    if repository and claimed not in (None, repository):
        raise CorruptMetricDataError(
            f"{PRE_JOB_FILE}: repository {claimed!r} is not {repository!r}, the provisioner's"
        )
    if owner and claimed is not None and claimed.partition("/")[0].lower() != owner.lower():
        raise CorruptMetricDataError(
            f"{PRE_JOB_FILE}: repository {claimed!r} is not owned by {owner!r}, the provisioner's"
        )
    if repository and claimed != repository:
        return metrics.model_copy(
            update={"pre_job": pre.model_copy(update={"repository": repository})}
        )
    return metrics


def _read_bounded(dir_fd: int, name: str, max_size: int) -> str | None:
    """Return a file's text, None if it is missing; never follow, block on or over-read it."""
    try:
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(before.st_mode):
        kind = _KINDS.get(stat.S_IFMT(before.st_mode), "not a regular file")
        raise CorruptMetricDataError(f"{name}: is {kind}; only regular files are read")
    if before.st_size > max_size:
        raise CorruptMetricDataError(f"{name}: {before.st_size} bytes, more than {max_size}")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise CorruptMetricDataError(f"{name}: cannot be opened safely: {exc.strerror}") from None
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            raise CorruptMetricDataError(f"{name}: was replaced while being read")
        data = os.read(fd, max_size + 1)
    finally:
        os.close(fd)
    if len(data) > max_size:
        raise CorruptMetricDataError(f"{name}: grew beyond {max_size} bytes while being read")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptMetricDataError(f"{name}: not UTF-8 (byte {exc.start})") from None


def _excerpt(text: str) -> str:
    return repr(text[:40]) + ("..." if len(text) > 40 else "")


def _timestamp(name: str, text: str | None) -> float | None:
    if text is None:
        return None
    if not _NUMBER.fullmatch(text):
        raise CorruptMetricDataError(f"{name}: not a Unix timestamp: {_excerpt(text)}")
    try:
        return _plausible(float(text))
    except ValueError as exc:
        raise CorruptMetricDataError(f"{name}: timestamp {text.strip()[:20]} {exc}") from None


def _reject_constant(constant: str) -> None:
    raise ValueError(f"{constant} is not a number")


def _bounded_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"a number of more than {MAX_DIGITS} digits")
    return int(literal)


def _bounded_float(literal: str) -> float:
    digits = literal.lstrip("-").split("e")[0].split("E")[0]
    if len(digits) > MAX_DIGITS + 1 or len(literal) > 2 * MAX_DIGITS:
        raise ValueError(f"a number of more than {MAX_DIGITS} digits")
    return float(literal)


def _check_depth(name: str, text: str) -> None:
    """Refuse JSON nested deeper than `MAX_DEPTH` before a parser recurses into it."""
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise CorruptMetricDataError(f"{name}: nested deeper than {MAX_DEPTH} levels")
        elif char in "]}":
            depth -= 1


def _model(model: type[_ModelT], name: str, text: str | None) -> _ModelT | None:
    if text is None:
        return None
    _check_depth(name, text)
    try:
        data = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_int=_bounded_int,
            parse_float=_bounded_float,
        )
    except ValueError as exc:
        raise CorruptMetricDataError(f"{name}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CorruptMetricDataError(f"{name}: must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()[:3]
        )
        raise CorruptMetricDataError(f"{name}: {problems}") from None
