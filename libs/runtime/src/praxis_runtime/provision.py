"""``python -m praxis_runtime.provision --workcell A --workcell B``: create the streams, buckets
and stores of a deployment (``praxis_contracts.permissions.topology``), and bring existing ones to
their declared settings.

Run once at deploy or start-up, and again when a workcell is added, as the ``provisioner``
identity (``NATS_USER=provisioner``, ``NATS_PASSWORD_FILE``): the only identity that may create or
update a stream. Services never do; they check at start-up that what they use exists
(``praxis_runtime.topology.verify``). ``NATS_URL`` may list several servers (a cluster);
``NATS_REPLICAS`` sets the replicas of everything created or aligned. Idempotent.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

import nats

from praxis_contracts.permissions import topology
from praxis_contracts.topology import claims
from praxis_runtime.settings import (
    ServiceSettings,
    load_settings,
    nats_password,
    nats_servers,
    nats_tls,
)
from praxis_runtime.topology import provision

log = logging.getLogger("praxis.provision")


class Settings(ServiceSettings):
    service_name: str = "provision"


async def provision_deployment(
    settings: ServiceSettings, workcells: Sequence[str], extra_claims: Sequence[str] = ()
) -> list[str]:
    """Connect as the configured identity and provision the deployment's topology."""
    options: dict[str, object] = {"servers": nats_servers(settings.nats_url)}
    if settings.nats_user is not None:
        options |= {"user": settings.nats_user, "password": nats_password(settings) or ""}
        # Every identity receives replies on its own inbox only (the server refuses the rest).
        options["inbox_prefix"] = f"_INBOX.{settings.nats_user}"
    if (tls := nats_tls(settings)) is not None:  # a cluster that requires TLS (production)
        options["tls"] = tls
    nc = await nats.connect(**options)  # type: ignore[arg-type]
    try:
        wanted = topology(workcells)
        stores = (*wanted.object_stores, *(claims(name) for name in extra_claims))
        wanted = type(wanted)(wanted.streams, wanted.key_values, stores)
        return await provision(nc.jetstream(), wanted, replicas=settings.nats_replicas)
    finally:
        await nc.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m praxis_runtime.provision", description=__doc__)
    parser.add_argument(
        "--workcell", action="append", default=[], help="a workcell of the deployment (repeat)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = load_settings(Settings)
    done = asyncio.run(provision_deployment(settings, args.workcell))
    for line in done:
        log.info(line)
    log.info("topology provisioned (%d changes) for workcells %s", len(done), args.workcell)
    return 0


if __name__ == "__main__":
    sys.exit(main())
