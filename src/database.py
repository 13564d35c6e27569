"""The requirer side of the `database` relation (interface `postgresql_client`).

A small requirer of our own rather than `dpcharmlibs-interfaces`: that package's requirer
speaks only version 1 of the contract (a `requests` list), which PostgreSQL charms released
before it ignore, and it brings `cryptography` along. Version 0, spoken here, is served by
every charmed PostgreSQL, old and new: the leader asks for a database by name and for the
secret fields it reads; the provider answers with `endpoints` (or `uris`) and the login in a
Juju secret (`secret-user`), and its TLS offer (`tls`, `tls-ca`) in another (`secret-tls`);
without secrets, in plain fields of the same names. With TLS offered the connection requires
it and, given the CA, verifies the server's certificate and name (`sslmode=verify-full`).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import logging
from collections.abc import Mapping
from urllib.parse import quote, urlencode

import ops

logger = logging.getLogger(__name__)

RELATION = "database"
DATABASE = "runner_fs"
DEFAULT_PORT = 5432
REQUESTED_SECRETS = ["username", "password", "uris", "tls", "tls-ca"]


@dataclasses.dataclass(frozen=True)
class Login:
    """What the provider answered: a libpq URI without TLS settings, and its TLS offer."""

    uri: str = dataclasses.field(repr=False)  # holds the password
    tls: bool
    tls_ca: str | None

    def dsn(self, ca_path: str) -> str:
        """Return the URI with TLS required and verified when offered (`ca_path`: the CA file).

        With TLS but no CA from the provider, the connection is encrypted but not verified.
        """
        if not self.tls:
            return self.uri
        params = (
            {"sslmode": "verify-full", "sslrootcert": ca_path}
            if self.tls_ca
            else {"sslmode": "require"}
        )
        return f"{self.uri}{'&' if '?' in self.uri else '?'}{urlencode(params)}"


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """Split `host:port`, `[v6]:port`, a bare IPv6 address or a bare host (port 5432).

    Raises:
        ValueError: the port is not a number.
    """
    endpoint = endpoint.strip()
    try:
        return str(ipaddress.ip_address(endpoint)), DEFAULT_PORT  # v4 or v6, no port
    except ValueError:
        pass
    if endpoint.startswith("["):
        host, _, rest = endpoint[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, sep, port = endpoint.rpartition(":")
        host, port = (host, port) if sep else (port, "")
    if port and not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r:.80}: the port must be a number")
    return host, int(port) if port else DEFAULT_PORT


class DatabaseRequirer(ops.Object):
    """Ask for a database and read its login; the charm converges on any change."""

    def __init__(self, charm: ops.CharmBase, relation_name: str = RELATION) -> None:
        """Write the request whenever the leader sees the relation."""
        super().__init__(charm, relation_name)
        self.relation_name = relation_name
        relation = charm.on[relation_name]
        for event in (
            relation.relation_joined,
            relation.relation_changed,
            charm.on.leader_elected,
        ):
            self.framework.observe(event, self._request)

    @property
    def relation(self) -> ops.Relation | None:
        """Return the relation, if the charm is integrated with a database."""
        return self.model.get_relation(self.relation_name)

    def _request(self, _: ops.EventBase) -> None:
        relation = self.relation
        if relation is None or not self.model.unit.is_leader():
            return
        relation.data[self.model.app].update(
            {"database": DATABASE, "requested-secrets": json.dumps(REQUESTED_SECRETS)}
        )

    @functools.cached_property
    def login(self) -> Login | None:
        """The provider's answer, read once per hook; None until it has answered.

        The URI holds the password: it goes into the 0600 host config file, never into logs.
        A `uris` entry from the provider is used whole, as given (it may name several hosts);
        else every host of `endpoints`, as one libpq multi-host URI.
        """
        relation = self.relation
        if relation is None or relation.app is None:
            return None
        answer = relation.data[relation.app]
        user = self._fields(answer, "secret-user", ("username", "password", "uris"))
        tls = self._fields(answer, "secret-tls", ("tls", "tls-ca"))
        if user is None or tls is None:
            return None
        uri = user.get("uris", "").strip() or self._uri(answer, user)
        if not uri:
            return None
        # Not urlsplit: where Python checks bracketed hosts (Ubuntu's 3.10 and 3.12, Debian's
        # 3.11), a multi-host netloc with an IPv6 host is refused as an invalid URL.
        if uri.partition("://")[0].lower() not in ("postgresql", "postgres"):
            logger.error("the database answered a URI that is not postgresql://; ignored")
            return None
        return Login(uri, tls.get("tls", "").lower() == "true", tls.get("tls-ca") or None)

    @staticmethod
    def _uri(answer: Mapping[str, str], user: Mapping[str, str]) -> str | None:
        """Build one libpq URI naming every host of `endpoints`.

        With several, libpq tries each in turn for the one that takes writes
        (`target_session_attrs=read-write`).
        """
        endpoints = [part for part in answer.get("endpoints", "").split(",") if part.strip()]
        name, password = user.get("username"), user.get("password")
        if not (endpoints and name and password):
            return None
        try:
            hosts = [split_endpoint(endpoint) for endpoint in endpoints]
        except ValueError as exc:
            logger.error("database endpoints: %s", exc)
            return None
        where = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                         for host, port in hosts)  # fmt: skip
        uri = (
            f"postgresql://{quote(name, safe='')}:{quote(password, safe='')}@{where}"
            f"/{quote(answer.get('database') or DATABASE, safe='')}"
        )
        return f"{uri}?target_session_attrs=read-write" if len(hosts) > 1 else uri

    def _fields(
        self, answer: Mapping[str, str], secret_key: str, names: tuple[str, ...]
    ) -> Mapping[str, str] | None:
        """Return `names` from the secret the provider named, or from the databag without one."""
        content: Mapping[str, str] = answer
        secret_id = answer.get(secret_key)
        if secret_id:
            try:
                content = self.model.get_secret(id=secret_id).get_content(refresh=True)
            except (ops.SecretNotFoundError, ops.ModelError) as exc:
                logger.warning("cannot read the database's %s: %s", secret_key, type(exc).__name__)
                return None
        return {name: content[name] for name in names if content.get(name)}
