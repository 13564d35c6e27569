"""The requirer side of the `database` relation (interface `postgresql_client`).

A small requirer of our own rather than `dpcharmlibs-interfaces`: that package's requirer
speaks only version 1 of the contract (a `requests` list), which PostgreSQL charms released
before it ignore, and it brings `cryptography` along. Version 0, spoken here, is served by
every charmed PostgreSQL, old and new: the leader asks for a database by name; the provider
answers with `endpoints` and the login, in a Juju secret (`secret-user`) or, without
secrets, in `username` and `password`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from urllib.parse import quote

import ops

logger = logging.getLogger(__name__)

RELATION = "database"
DATABASE = "runner_fs"


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
            {"database": DATABASE, "requested-secrets": json.dumps(["username", "password"])}
        )

    def dsn(self) -> str | None:
        """Return a libpq URI for the database, or None until the provider has answered.

        The URI holds the password: it goes into the 0600 host config file, never into logs.
        """
        relation = self.relation
        if relation is None or relation.app is None:
            return None
        answer = relation.data[relation.app]
        endpoints = answer.get("endpoints", "")
        login = self._login(answer)
        if not endpoints or login is None:
            return None
        host, _, port = endpoints.split(",")[0].rpartition(":")
        user, password = login
        return (
            f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port or 5432}"
            f"/{quote(answer.get('database') or DATABASE, safe='')}"
        )

    def _login(self, answer: ops.RelationDataContent) -> tuple[str, str] | None:
        content: Mapping[str, str] = answer
        secret_id = answer.get("secret-user")
        if secret_id:
            try:
                content = self.model.get_secret(id=secret_id).get_content(refresh=True)
            except (ops.SecretNotFoundError, ops.ModelError) as exc:
                logger.warning("cannot read the database login secret: %s", type(exc).__name__)
                return None
        user, password = content.get("username"), content.get("password")
        return (user, password) if user and password else None
