"""gRPC ``DatasetService``."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from pydantic import ValidationError

from coachforge.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from coachforge_dataset import service, versions
from coachforge_dataset.models import DatasetVersion
from coachforge_dataset.pipeline.eligibility import REASONS, eligibility_messages
from coachforge_dataset.schemas import CreateDatasetVersion
from coachforge_dataset.service import DatasetDeps
from coachforge_shared.auth import current_principal
from coachforge_shared.errors import InvalidArgument, PermissionDenied
from coachforge_shared.grpc_server import ServiceRegistration
from coachforge_shared.ids import to_unix


class DatasetServicer(dataset_pb2_grpc.DatasetServiceServicer):
    def __init__(self, deps: DatasetDeps) -> None:
        self.deps = deps

    def UploadFile(self, request: dataset_pb2.UploadFileRequest, context: grpc.ServicerContext) -> dataset_pb2.File:
        principal = current_principal()
        if request.purpose == service.RESULTS_PURPOSE:  # written by the platform's own services only
            if not principal.internal:
                raise PermissionDenied(f"Purpose {service.RESULTS_PURPOSE!r} is reserved for the platform.",
                                       param="purpose")
            return service.to_proto(service.store_result_file(self.deps, principal.tenant_id, request.filename,
                                                              request.content))
        size = self.deps.settings.chunk_bytes
        chunks = (request.content[i:i + size] for i in range(0, len(request.content), size))
        row = service.store_upload(self.deps, principal.tenant_id, request.filename,
                                   request.purpose or "fine-tune", chunks, policy=request.policy or None,
                                   assistant_speaker=request.assistant_speaker or None,
                                   screenshot_right=request.screenshot_right or None)
        return service.to_proto(row)

    def UploadFileStream(self, request_iterator: Iterator[dataset_pb2.UploadFileChunk],
                         context: grpc.ServicerContext) -> dataset_pb2.File:
        first = next(request_iterator, None)
        if first is None:
            raise InvalidArgument("Empty upload stream: the first message names the file.", param="filename")

        def chunks() -> Iterator[bytes]:
            if first.data:
                yield first.data
            for message in request_iterator:
                if message.data:
                    yield message.data

        row = service.store_upload(self.deps, current_principal().tenant_id, first.filename or "upload.jsonl",
                                   first.purpose or "fine-tune", chunks(), policy=first.policy or None,
                                   assistant_speaker=first.assistant_speaker or None,
                                   screenshot_right=first.screenshot_right or None)
        return service.to_proto(row)

    def GetFileReport(self, request: dataset_pb2.GetFileReportRequest,
                      context: grpc.ServicerContext) -> Iterator[dataset_pb2.FileChunk]:
        tenant = current_principal().tenant_id
        if request.report_id:
            report = service.get_report(self.deps, tenant, report_id=request.report_id)
        elif request.file_id:
            report = service.get_report(self.deps, tenant, file_id=request.file_id)
        else:
            raise InvalidArgument("Name the file_id or the report_id.", param="file_id")
        for line in service.report_lines(report):
            yield dataset_pb2.FileChunk(data=line)

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
        tenant_id = current_principal().tenant_id
        if request.as_openai_chat:
            chunks = service.read_as_openai_chat(self.deps, tenant_id, request.file_id)
        else:
            chunks = service.read_content(self.deps, tenant_id, request.file_id)
        for chunk in chunks:
            yield dataset_pb2.FileChunk(data=chunk)

    def CreateDatasetVersion(self, request: dataset_pb2.CreateDatasetVersionRequest,
                             context: grpc.ServicerContext) -> dataset_pb2.DatasetVersion:
        try:
            body = CreateDatasetVersion.model_validate_json(request.request_json)
        except ValidationError as err:
            first = err.errors()[0]
            raise InvalidArgument(f"Invalid request: {first['msg']}",
                                  param=".".join(str(p) for p in first["loc"]) or None) from None
        return version_proto(versions.create_version(self.deps, current_principal().tenant_id, body))

    def GetDatasetVersion(self, request: dataset_pb2.GetDatasetVersionRequest,
                          context: grpc.ServicerContext) -> dataset_pb2.DatasetVersion:
        return version_proto(versions.get_version(self.deps, current_principal().tenant_id,
                                                  request.dataset_version_id))

    def ListDatasetVersions(self, request: dataset_pb2.ListDatasetVersionsRequest,
                            context: grpc.ServicerContext) -> dataset_pb2.ListDatasetVersionsResponse:
        rows = versions.list_versions(self.deps, current_principal().tenant_id, request.name or None)
        return dataset_pb2.ListDatasetVersionsResponse(versions=[version_proto(r) for r in rows])

    def ExportDatasetVersion(self, request: dataset_pb2.ExportDatasetVersionRequest,
                             context: grpc.ServicerContext) -> Iterator[dataset_pb2.FileChunk]:
        lines = versions.export(self.deps, current_principal().tenant_id, request.dataset_version_id,
                                request.format or "openai", request.split or "train")
        for line in lines:
            yield dataset_pb2.FileChunk(data=(line + "\n").encode())

    def DeleteDatasetVersion(self, request: dataset_pb2.GetDatasetVersionRequest,
                             context: grpc.ServicerContext) -> dataset_pb2.DeleteDatasetVersionResponse:
        versions.delete_version(self.deps, current_principal().tenant_id, request.dataset_version_id)
        return dataset_pb2.DeleteDatasetVersionResponse(id=request.dataset_version_id, deleted=True)

    def CheckTokens(self, request: dataset_pb2.CheckTokensRequest,
                    context: grpc.ServicerContext) -> dataset_pb2.CheckTokensResponse:
        if not request.id:
            raise InvalidArgument("Name a file id or a dataset version id.", param="id")
        result = versions.check_tokens(self.deps, current_principal().tenant_id, request.id, request.max_length,
                                       request.base_model, request.max_issues or None, request.split)
        return dataset_pb2.CheckTokensResponse(
            examples=result.examples, over_limit=result.over_limit, max_tokens=result.max_tokens,
            total_tokens=result.total_tokens, message=result.message(),
            issues=[dataset_pb2.LineIssue(line=i.line, field=i.field, reason=i.reason) for i in result.issues])

    def CheckEligibility(self, request: dataset_pb2.CheckEligibilityRequest,
                         context: grpc.ServicerContext) -> dataset_pb2.CheckEligibilityResponse:
        if not request.id:
            raise InvalidArgument("Name a file id or a dataset version id.", param="id")
        result = versions.check_eligibility(self.deps, current_principal().tenant_id, request.id, request.split)
        texts = eligibility_messages(result.min_answer_chars)
        return dataset_pb2.CheckEligibilityResponse(
            examples=result.examples, usable=result.usable, advice=result.advice(), message=result.message(),
            unusable=[dataset_pb2.UnusableCount(reason=r, count=result.unusable[r], description=texts[r].description)
                      for r in REASONS if result.unusable[r]],
            issues=[dataset_pb2.LineIssue(line=i.line, field=i.field, reason=i.reason) for i in result.samples])

    def GenerateSyntheticData(self, request: dataset_pb2.GenerateSyntheticDataRequest,
                              context: grpc.ServicerContext) -> dataset_pb2.File:
        row = service.generate_synthetic(self.deps, current_principal().tenant_id, request.count, request.seed,
                                         request.filename or None)
        return service.to_proto(row)


def version_proto(row: DatasetVersion) -> dataset_pb2.DatasetVersion:
    return dataset_pb2.DatasetVersion(
        id=row.id, name=row.name, sha256=row.sha256, train_examples=row.train_examples,
        validation_examples=row.validation_examples, created_at=to_unix(row.created_at),
        lineage_json=row.lineage_json, stats_json=row.stats_json, report_json=row.report_json)


def registration(deps: DatasetDeps) -> ServiceRegistration:
    return ServiceRegistration(dataset_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name,
                               DatasetServicer(deps), dataset_pb2_grpc.add_DatasetServiceServicer_to_server)
