"""Real NATS (JetStream) and PostgreSQL servers for local runs and tests, without Docker.

Import what you need from the submodules:

* :mod:`praxis_devstack.servers` -- ``NatsServer``, ``PostgresServer``, ``LocalInfra`` and the
  ``python -m praxis_devstack.servers`` CLI;
* :mod:`praxis_devstack.db` -- URL helpers and synchronous CREATE/DROP DATABASE;
* :mod:`praxis_devstack.pytest_plugin` -- the ``nats_url``, ``database_url`` and
  ``make_database`` fixtures (registered automatically through the ``pytest11`` entry point).

The servers module is deliberately not imported here, so that ``python -m
praxis_devstack.servers`` does not import it twice.
"""

__version__ = "0.1.0"
