"""gRPC ``DatasetService``."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from coachforge.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from coachforge_dataset import service
from coachforge_dataset.service import DatasetDeps
from coachforge_shared.auth import current_principal
from coachforge_shared.grpc_server import ServiceRegistration


class DatasetServicer(dataset_pb2_grpc.DatasetServiceServicer):
    def __init__(self, deps: DatasetDeps) -> None:
        self.deps = deps

    def UploadFile(self, request: dataset_pb2.UploadFileRequest, context: grpc.ServicerContext) -> dataset_pb2.File:
        size = self.deps.settings.chunk_bytes
        chunks = (request.content[i:i + size] for i in range(0, len(request.content), size))
        row = service.store_upload(self.deps, current_principal().tenant_id, request.filename,
                                   request.purpose or "fine-tune", chunks)
        return service.to_proto(row)

    def GetFile(self, request: dataset_pb2.GetFileRequest, context: grpc.ServicerContext) -> dataset_pb2.File:
        return service.to_proto(service.get_file(self.deps, current_principal().tenant_id, request.file_id))

    def ListFiles(self, request: dataset_pb2.ListFilesRequest,
                  context: grpc.ServicerContext) -> dataset_pb2.ListFilesResponse:
        rows = service.list_files(self.deps, current_principal().tenant_id, request.purpose or None)
        return dataset_pb2.ListFilesResponse(files=[service.to_proto(r) for r in rows])

    def DeleteFile(self, request: dataset_pb2.GetFileRequest,
                   context: grpc.ServicerContext) -> dataset_pb2.DeleteFileResponse:
        service.delete_file(self.deps, current_principal().tenant_id, request.file_id)
        return dataset_pb2.DeleteFileResponse(id=request.file_id, deleted=True)

    def GetFileContent(self, request: dataset_pb2.GetFileRequest,
                       context: grpc.ServicerContext) -> Iterator[dataset_pb2.FileChunk]:
        for chunk in service.read_content(self.deps, current_principal().tenant_id, request.file_id):
            yield dataset_pb2.FileChunk(data=chunk)


def registration(deps: DatasetDeps) -> ServiceRegistration:
    return ServiceRegistration(dataset_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name,
                               DatasetServicer(deps), dataset_pb2_grpc.add_DatasetServiceServicer_to_server)
