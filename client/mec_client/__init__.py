"""Client of the MEC platform's REST API; imports nothing of the server, nor torch.

    from mec_client import Client
    client = Client()                      # MEC_API_URL / MEC_API_KEY, or `mec login`'s file
    job = client.submit({"kind": "pretrain", "config": {"dataset": "fashion-mnist"}})
"""

from mec_client.client import APIError, Client, Galleries
from mec_client.enums import FINISHED, JobKind, JobStatus, Queue
from mec_client.transport import TransportError

__all__ = ["APIError", "Client", "FINISHED", "Galleries", "JobKind", "JobStatus", "Queue",
           "TransportError"]
