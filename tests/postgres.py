"""A throw-away PostgreSQL server for tests and benchmarks.

The server refuses to run as root, so as root it runs as the `postgres` user from Debian's
package. It listens on 127.0.0.1 and ::1 (password login, TLS offered with a certificate from
a CA made for it, `ca_pem`) and on a Unix socket in its own temporary directory, and is gone,
directory included, after `stop()`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg

SUPERUSER = "runner_fs_test"


def server_binaries() -> Path | None:
    """Return the newest installed PostgreSQL bin directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    return Path(found[-1]).parent if found else None


def _version(path: str) -> int:
    return int(Path(path).parent.parent.name.split(".")[0])


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """Make a self-signed CA in `directory`; return its certificate and key."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", f"/CN={name}"],
                   check=True, capture_output=True)  # fmt: skip
    return cert, key


def _make_certificates(directory: Path, user: str | None) -> str:
    """Issue the server a certificate for 127.0.0.1, ::1 and localhost; return the CA's PEM."""
    ca, ca_key = make_ca(directory, "test-ca")
    key, csr, cert = (directory / name for name in ("server.key", "server.csr", "server.crt"))
    names = directory / "names.ext"
    names.write_text("subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n")
    subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
                    "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", names],
                   check=True, capture_output=True)  # fmt: skip
    key.chmod(0o600)
    if user:
        account = pwd.getpwnam(user)
        os.chown(key, account.pw_uid, account.pw_gid)
    return ca.read_text()


def has_ipv6_loopback() -> bool:
    """Whether ::1 can be listened on here."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory."""

    def __init__(self, durable: bool = False) -> None:
        """Create the cluster (not started).

        Args:
            durable: keep fsync on (benchmarks); tests turn it off for speed.

        Raises:
            RuntimeError: no PostgreSQL server is installed.
        """
        binaries = server_binaries()
        if binaries is None:
            raise RuntimeError("no PostgreSQL server: apt-get install postgresql")
        self.bin = binaries
        self.directory = Path(tempfile.mkdtemp(prefix="runner-fs-pg-"))
        self.data = self.directory / "data"
        self.port = _free_port()
        self.password = secrets.token_hex(12)
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user:
            account = pwd.getpwnam(self._user)
            os.chown(self.directory, account.pw_uid, account.pw_gid)
        (self.directory / "pw").write_text(self.password)
        self.ca_pem = _make_certificates(self.directory, self._user)
        self._run("initdb", "-D", self.data, "-U", SUPERUSER, "--pwfile", self.directory / "pw",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8")  # fmt: skip
        settings = {
            "listen_addresses": "'127.0.0.1,::1'" if has_ipv6_loopback() else "'127.0.0.1'",
            "ssl": "on",
            "ssl_cert_file": f"'{self.directory / 'server.crt'}'",
            "ssl_key_file": f"'{self.directory / 'server.key'}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.directory}'",
            "max_connections": "100",
            "fsync": "on" if durable else "off",
            "synchronous_commit": "on" if durable else "off",
            "full_page_writes": "on" if durable else "off",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _run(self, tool: str, *args: object) -> None:
        subprocess.run([self.bin / tool, *map(str, args)], user=self._user, check=True,
                       capture_output=True, cwd=self.directory)  # fmt: skip

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run("pg_ctl", "-D", self.data, "-l", self.directory / "log", "-w", "-t", "60",
                  "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`, or `immediate` like a crash)."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def remove(self) -> None:
        """Stop the server if it runs, and delete its directory."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def dsn(self, dbname: str = "postgres", password: str | None = None) -> str:
        """Return a password login over TCP to `dbname`."""
        return (
            f"postgresql://{SUPERUSER}:{password or self.password}@127.0.0.1:{self.port}/{dbname}"
        )

    def create_database(self, name: str) -> str:
        """Create an empty database and return its DSN."""
        with psycopg.connect(self.dsn(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')  # names come from the tests
        return self.dsn(name)


@contextlib.contextmanager
def running_server(durable: bool = False) -> Iterator[PostgresServer]:
    """Yield a started server; remove it afterwards."""
    server = PostgresServer(durable)
    try:
        server.start()
        yield server
    finally:
        server.remove()
