"""This process's place in a multi-process job (`accelerate launch`, `torchrun`, or one process
per rank started by a cluster's launcher with RANK / WORLD_SIZE / MASTER_ADDR set), and the
collective that makes an error on one rank stop every rank with its message.

The stages run in phases (check and load; compute this rank's share; the main process merges);
each phase ends in `together()`, where every rank says whether it failed. A rank that failed
raises its own error, the others raise "stopped: rank r failed: …". Without it, a rank failing
where the others wait (in a barrier, or before the group has even formed) leaves them waiting
until the process group's timeout (30 minutes), or for ever during the rendezvous.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator

import torch

from opcircuits.errors import OpcircuitsError

log = logging.getLogger(__name__)


class Ranks:
    """Rank, world size and local rank of this process (one process alone: 0, 1, 0). Only small
    Python objects are exchanged, over gloo, so the same code serves CPU and GPU jobs."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.owns_group = False
        self.group = None
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend="gloo")
                self.owns_group = True
            elif dist.get_backend() != "gloo":  # e.g. NCCL set up by the caller: objects need gloo
                self.group = dist.new_group(backend="gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """`auto` in a multi-process job on GPUs means this process's own GPU."""
        if self.world > 1 and requested == "auto" and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested

    def shares(self, n: int) -> list[int]:
        """This rank's indices of `n` shards or parts: r, r+W, r+2W, …"""
        return list(range(self.rank, n, self.world))

    def agree(self, failure: str | None) -> None:
        """A collective every rank reaches: `failure` is this rank's error message (None when it
        succeeded). Raises, on a rank that succeeded, when another one failed."""
        if self.world == 1:
            return
        import torch.distributed as dist

        said: list[str | None] = [None] * self.world
        dist.all_gather_object(said, failure, group=self.group)
        failed = [(r, m) for r, m in enumerate(said) if m is not None]
        if failure is None and failed:
            r, message = failed[0]
            raise OpcircuitsError(f"stopped: rank {r} failed: {message}")

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Run a phase; at its end every rank learns whether any failed (see `agree`). The
        failing rank's own error propagates unchanged. Ctrl-C and the like are not caught: the
        launcher delivers them to every rank."""
        try:
            yield
        except Exception as exc:
            message = str(exc) if isinstance(exc, OpcircuitsError) else _describe(exc)
            if self.world > 1:
                log.debug("rank %d failed: %s", self.rank, message)
            # The other ranks must hear of it; a broken connection must not hide this error.
            with contextlib.suppress(Exception):
                self.agree(message or type(exc).__name__)
            raise
        self.agree(None)

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            # Leave together: a rank tearing gloo down while its peer still uses the connection
            # can abort the peer ("terminate called without an active exception", seen once in
            # CI after a failed phase). A rank that never comes (killed) costs the others 60 s.
            with contextlib.suppress(Exception):
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
            dist.destroy_process_group()
            self.owns_group = False


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
