"""Inference metrics. Labels are bounded: tenant, model (registered ids), kind, purpose (app,
evaluation)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TOKENS = Counter("coachforge_inference_tokens_total",
                 "Tokens processed, by kind (prompt, completion) and purpose (app: an application's request; "
                 "evaluation: an eval run's sample or a judge).", ["tenant", "model", "kind", "purpose"])
COST = Counter("coachforge_inference_cost_usd_total",
               "Cost of inference in US dollars (price table), by purpose (app, evaluation).",
               ["tenant", "model", "purpose"])
REQUESTS = Counter("coachforge_inference_requests_total",
                   "Chat/completion requests by outcome; model is the resolved model id, or 'unresolved' "
                   "when the requested name matched no model (it is never the raw requested name).",
                   ["tenant", "model", "outcome"])
LATENCY = Histogram("coachforge_inference_request_seconds", "Total request latency.", ["model"],
                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120))
TTFT = Histogram("coachforge_inference_ttft_seconds", "Time to first token (streaming requests).", ["model"],
                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))
GATEWAY = Histogram("coachforge_inference_gateway_seconds",
                    "Time a request spends in the inference service apart from waiting for the engine, from its "
                    "arrival to the answer ready (mode=stream: to the first chunk): authentication, resolution, "
                    "routing, adapter loads, encoding.", ["mode"],
                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30))
ADAPTER_LOADS = Counter("coachforge_inference_adapter_loads_total",
                        "LoRA adapter loads into an engine, by outcome (loaded, error); engine = a configured or "
                        "discovered engine URL.", ["engine", "outcome"])
ADAPTER_EVICTIONS = Counter("coachforge_inference_adapter_evictions_total",
                            "Adapters unloaded from an engine (the least recently used, to make room; or a "
                            "deleted model's), by outcome (unloaded, error).", ["engine", "outcome"])
RETRIES = Counter("coachforge_inference_retries_total",
                  "Requests retried on another engine after a connection failure before anything was streamed "
                  "(engine = the engine that failed).", ["engine"])
ENGINES = Gauge("coachforge_inference_engines",
                "Engines in each pool (a base model's, or the default), by state (up, down).", ["state", "pool"])
CACHE_INVALIDATIONS = Counter("coachforge_inference_resolve_invalidations_total",
                              "Resolution cache entries dropped by model.* events, by event type.", ["event"])
CANDIDATE_ROUTED = Counter("coachforge_inference_candidate_requests_total",
                           "Requests to an avatar with a candidate, by which version answered (active, candidate).",
                           ["tenant", "avatar", "arm"])
FALLBACKS = Counter("coachforge_inference_fallbacks_total",
                    "Requests answered by the base model because the adapter could not be served.",
                    ["tenant", "model"])
ENGINE_UP = Gauge("coachforge_inference_engine_up",
                  "1 while the engine answers its health check and calls, 0 after a failure (label: the "
                  "configured engine URL, so bounded by configuration).", ["engine"])
STORED = Counter("coachforge_inference_stored_completions_total",
                 "Chat completions asked with store, by outcome: published (as a completion.stored event) or "
                 "failed (not sent, e.g. too large for the broker; the answer itself was not affected).",
                 ["tenant", "outcome"])
STORED_SCRUBBED = Counter("coachforge_inference_stored_completions_scrubbed_total",
                          "Stored chat completions in which personal data (e-mail addresses, phone numbers, URLs "
                          "carrying credentials) was replaced before they were kept (the tenant's scrub_pii).",
                          ["tenant"])
STORED_PURGED = Counter("coachforge_inference_stored_completions_purged_total",
                        "Stored chat completions deleted (with their metadata and feedback) because they were "
                        "older than their tenant's retention_days.", ["tenant"])
RATE_LIMITED = Counter("coachforge_inference_rate_limited_total",
                       "Requests refused by their tenant's limits, by the limit hit (requests, tokens, quota).",
                       ["tenant", "limit"])
KNOWLEDGE_LOOKUPS = Counter("coachforge_knowledge_lookups_total",
                            "Knowledge searches for avatar personas with knowledge, by outcome: used (snippets "
                            "put into the prompt), empty (nothing matched or fitted), no_query (no user text to "
                            "search for), not_found (the knowledge base is gone), unavailable (the dataset service "
                            "did not answer in time or is not configured), error (any other refusal).",
                            ["tenant", "outcome"])
