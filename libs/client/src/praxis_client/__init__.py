"""A typed client of the Praxis HTTP API.

>>> from praxis_client import Client
>>> with Client("http://127.0.0.1:8000", token) as praxis:
...     run = praxis.submit_run("transfer", workcell="demo", parameters={"volume": 20})
...     for event in praxis.events(run.accession_id):
...         print(event.type)
...     print(praxis.get_run(run.accession_id).status)

``AsyncClient`` is the same API for asyncio (``await``, ``async for``). Replies are the
contract models (``praxis_contracts``); errors raise the contract's ``PraxisError`` subclasses
by their code; ``paginate`` walks any list; ``events`` follows a run's live stream and resumes
after a broken connection from the last event it saw.
"""

from praxis_client import calls
from praxis_client.aio import AsyncClient
from praxis_client.errors import ApiError, ConnectionFailed, correlation_of, status_of
from praxis_client.events import StreamEvent
from praxis_client.sync import Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "ConnectionFailed",
    "StreamEvent",
    "calls",
    "correlation_of",
    "status_of",
]
