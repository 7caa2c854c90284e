"""How the dataset service runs in a process: its dependencies, REST routers and gRPC servicers
(``DatasetService``, ``KnowledgeService``; found by the runtime through the ``coachforge.services``
entry point)."""

from __future__ import annotations

from coachforge_dataset import api, grpc
from coachforge_dataset.knowledge import api as knowledge_api
from coachforge_dataset.knowledge import grpc as knowledge_grpc
from coachforge_dataset.service import DatasetDeps
from coachforge_dataset.settings import DatasetSettings
from coachforge_shared.runtime import Service, Wiring


def wire(w: Wiring) -> Service:
    settings = DatasetSettings()
    # "" turns the trainer check off (no trainer to ask before a file is deleted).
    trainer = w.channel(settings.trainer_grpc_target) if settings.trainer_grpc_target != "" else None
    # "" leaves inference out (a version cannot be built from stored completions).
    inference = w.channel(settings.inference_grpc_target) if settings.inference_grpc_target != "" else None
    deps = DatasetDeps(db=w.db, settings=settings, files_dir=w.platform.resolved_artifacts_dir / "files",
                       publisher=w.publisher, models_dir=w.platform.models_dir, trainer=trainer,
                       inference=inference)
    # an upload's multipart envelope (boundaries, part headers, the form fields) on top of the file
    upload_limit = deps.settings.max_upload_bytes + 64 * 1024
    # a knowledge document given inline: its text, JSON-encoded, and the other fields
    document_limit = deps.settings.knowledge_max_document_bytes + 64 * 1024
    return Service("dataset", deps, routers=[api.router, api.datasets, knowledge_api.router],
                   servicers=[grpc.registration(deps), knowledge_grpc.registration(deps)],
                   body_limits=[("/v1/files", upload_limit), ("/v1/knowledge_bases/[^/]+/documents", document_limit)])
