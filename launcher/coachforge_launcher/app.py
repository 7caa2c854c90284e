"""The services process of the all-in-one mode: every installed service (REST routers on one port,
gRPC servicers on one port, Prometheus metrics on one port, event consumers) composed by the
runtime into one process. Services
still reach each other through real gRPC calls (to this same server) and real events on the
broker. Its ``/ready`` also asks the trainer workers the supervisor runs beside it.

Run as ``python -m coachforge_launcher.app`` (the supervisor does).
"""

from __future__ import annotations

import threading

import httpx
from fastapi import FastAPI

from coachforge_launcher.settings import StackSettings
from coachforge_shared import runtime
from coachforge_shared.logging import configure_logging
from coachforge_shared.settings import PlatformSettings


def workers_answer(stack: StackSettings) -> bool:
    """Every trainer worker is up: worker ``i`` answers on its metrics port (worker_metrics_port + i)."""
    for index in range(stack.trainer_workers):
        try:
            r = httpx.get(f"http://{stack.host}:{stack.worker_metrics_port + index}/metrics", timeout=2)
        except httpx.HTTPError:
            return False
        if r.status_code != 200:
            return False
    return True


def build(platform: PlatformSettings, stack: StackSettings) -> tuple[FastAPI, runtime.Process]:
    return runtime.compose(sorted(runtime.available()), platform, f"{stack.host}:{stack.grpc_port}",
                           extra_checks={"workers": lambda: workers_answer(stack)},
                           metrics_address=f"{stack.host}:{stack.metrics_port}")


def main() -> None:
    platform = PlatformSettings()
    stack = StackSettings()
    configure_logging(platform.log_level, json=platform.log_json)
    app, _ = build(platform, stack)
    runtime.serve(app, stack.host, stack.http_port)


if __name__ == "__main__":
    threading.current_thread().name = "services"
    main()
