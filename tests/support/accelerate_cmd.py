"""The `accelerate launch` prefix the multi-process tests share: two CPU processes on one machine,
no mixed precision, no dynamo, so a launched run is comparable with a single-process one."""

from __future__ import annotations

import sys


def accelerate_launch(*, port: int | None = None) -> list[str]:
    """The command up to (not including) the launched program; `port` pins the main process's
    rendezvous port (tests running side by side must not collide on the default)."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    if port is not None:
        cmd += ["--main_process_port", str(port)]
    return cmd
