"""TorchServe adapter: the four hooks, and nothing else; the work is in serving.service."""

from __future__ import annotations

import json
import logging
import os

import torch
from ts.torch_handler.base_handler import BaseHandler

from serving.service import Service  # installed with the platform beside TorchServe

log = logging.getLogger(__name__)


class MECHandler(BaseHandler):
    """Embedding or kNN retrieval, chosen by the archive's serving.json."""

    def initialize(self, context) -> None:
        properties = context.system_properties
        model_dir = properties["model_dir"]
        with open(os.path.join(model_dir, "serving.json")) as f:
            options = json.load(f)
        gpu = properties.get("gpu_id")
        device = f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu"
        # each worker is a process: its intra-op threads times the workers should not
        # exceed the cores (MEC_TORCH_THREADS on the TorchServe host overrides the archive)
        threads = os.environ.get("MEC_TORCH_THREADS") or options.get("torch_threads")
        if threads:
            torch.set_num_threads(int(threads))
        # a batch of one request: the other workers are most likely idle (they would have
        # batched it otherwise), so it gets every core and a lone client the model's speed
        self.threads = torch.get_num_threads()
        self.alone = int(os.environ.get("MEC_TORCH_THREADS_ALONE") or os.cpu_count() or 1)
        log.info("mec handler: %s on %s, %d torch threads", options["task"], device,
                 torch.get_num_threads())
        # per batch, TorchServe's worker writes three INFO lines to its stdout (when it got
        # the batch, two timings) that the frontend reads, parses and logs: a cost to both
        # processes on every batch; its request counters and latencies stay in the metrics
        logging.getLogger().setLevel(logging.WARNING)
        self.service = Service(model_dir, task=options["task"], device=device,
                               reference_dir=model_dir,
                               default_k=options.get("default_k", 10),
                               max_k=options.get("max_k", 100),
                               projector=options.get("projector", False),
                               deployment=options.get("deployment"))
        self.initialized = True

    def preprocess(self, data):
        return [self.service.parse(request) for request in data]

    def inference(self, data, *args, **kwargs):
        wanted = self.alone if len(data) == 1 else self.threads
        if wanted != torch.get_num_threads():
            torch.set_num_threads(wanted)
        return self.service.run(data)

    def postprocess(self, data):
        """Each answer encoded here, as its request's Accept asks (Service.encode): a dict
        left to TorchServe would go through its slow json.dumps(indent=2)."""
        bodies = []
        for i, answer in enumerate(data):
            if "error" in answer:
                self.context.set_response_status(400, answer["error"], idx=i)
            body, kind, headers = self.service.encode(answer, self._header(i, "accept"))
            self.context.set_response_content_type(i, kind)
            for name, value in headers.items():
                self.context.set_response_header(i, name, value)
            bodies.append(body)
        return bodies

    def _header(self, idx: int, name: str) -> str | None:
        """A request header whatever its case (the frontend passes them as the client
        wrote them)."""
        headers = self.context.get_all_request_header(idx) or {}
        return next((v for k, v in headers.items() if k.lower() == name), None)
