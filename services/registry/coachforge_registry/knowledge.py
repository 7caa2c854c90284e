"""The registry's check of a persona's knowledge base: the dataset service's ``KnowledgeService``
(gRPC ``GetKnowledgeBase``, on behalf of the avatar's tenant) must know it, so that a persona never
names another tenant's knowledge base or one that does not exist."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from coachforge.dataset.v1 import knowledge_pb2, knowledge_pb2_grpc
from coachforge_shared.errors import InvalidArgument, Unavailable, from_rpc_error
from coachforge_shared.grpc_server import InternalChannel

PARAM = "knowledge.knowledge_base"


@dataclass
class KnowledgeBaseCheck:
    """Asks the dataset service whether a tenant has a knowledge base."""

    dataset: InternalChannel
    timeout_s: float = 10.0

    def check(self, tenant_id: str, knowledge_base_id: str) -> None:
        """Nothing when ``tenant_id`` has the knowledge base; ``InvalidArgument`` naming
        ``knowledge.knowledge_base`` when it has none by that id (another tenant's is none of its);
        ``Unavailable`` when the dataset service cannot say now."""
        stub = knowledge_pb2_grpc.KnowledgeServiceStub(self.dataset.channel)
        try:
            stub.GetKnowledgeBase(knowledge_pb2.GetKnowledgeBaseRequest(knowledge_base_id=knowledge_base_id),
                                  metadata=self.dataset.metadata(tenant_id), timeout=self.timeout_s)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
            if code == grpc.StatusCode.NOT_FOUND:
                raise InvalidArgument(f"No such knowledge base: {knowledge_base_id}", param=PARAM,
                                      code="knowledge_base_not_found") from None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(f"The dataset service could not confirm knowledge base {knowledge_base_id} "
                                  "now; try again.", param=PARAM, retry_after_s=5) from None
            raise from_rpc_error(err) from None
