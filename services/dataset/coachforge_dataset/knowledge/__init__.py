"""Knowledge bases: tenants' text documents, chunked and searched with BM25 for knowledge snippets
in prompts (``/v1/knowledge_bases``, gRPC ``KnowledgeService``)."""
