"""How the webhooks service runs in a process: its REST router, gRPC servicer, the consumer of the
fine-tuning job and eval run events (its own group) and the delivery sender (started with the
process). Found by the runtime through the ``coachforge.services`` entry point."""

from __future__ import annotations

from coachforge_shared.runtime import Consumer, Service, Wiring
from coachforge_webhooks import api, grpc, service
from coachforge_webhooks.delivery import OUTCOMES, DeliverySender
from coachforge_webhooks.metrics import DELIVERIES
from coachforge_webhooks.schemas import WEBHOOK_EVENT_TYPES
from coachforge_webhooks.service import WebhooksDeps
from coachforge_webhooks.settings import WebhooksSettings


def wire(w: Wiring) -> Service:
    settings = WebhooksSettings()
    for event_type in WEBHOOK_EVENT_TYPES:  # every series exists from the start, so that increase() sees the first
        for outcome in OUTCOMES:
            DELIVERIES.labels(event_type, outcome)
    deps = WebhooksDeps(db=w.db, settings=settings)
    sender = DeliverySender(deps)
    deps.wake = sender.wake
    events = Consumer(settings.consumer_group, list(service.TOPICS), service.on_event(deps))
    return Service("webhooks", deps, routers=[api.router], servicers=[grpc.registration(deps)],
                   consumers=[events], checks={"webhook_sender": lambda: sender.running},
                   on_start=[sender.start], on_stop=[sender.stop])
