"""``coachforge``: run the all-in-one stack, run the demo, prepare the base model, manage tenants
and API keys."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from pydantic import ValidationError

from coachforge_launcher import client
from coachforge_launcher.settings import StackSettings
from coachforge_shared import dead_letters, runtime
from coachforge_shared.logging import configure_logging
from coachforge_shared.settings import PlatformSettings


def cmd_run(args: argparse.Namespace) -> int:
    from coachforge_launcher.stack import prepare, supervisor_config, supervisord_command

    platform, stack = PlatformSettings(), StackSettings()
    print(f"Preparing the stack in {platform.data_dir} (first run converts the base model, ~30 s)…", flush=True)
    prepared = prepare(platform, stack)
    conf = supervisor_config(platform, stack, prepared, console=True)
    print(f"""
CoachForge all-in-one
  OpenAI base URL  http://{stack.host}:{stack.http_port}/v1
  gRPC             {stack.host}:{stack.grpc_port}
  readiness        http://{stack.host}:{stack.http_port}/ready
  metrics          http://{stack.host}:{stack.metrics_port}/metrics
  API key          {prepared.api_key}{'  (new; stored in ' + str(platform.data_dir / 'api-key') + ')'
                                      if prepared.key_created else ''}
  logs             {platform.data_dir / 'logs'}
Press Ctrl-C to stop everything.
""", flush=True)
    cmd = supervisord_command(conf)
    os.execve(cmd[0], cmd, prepared.env)
    return 0  # not reached


def cmd_demo(args: argparse.Namespace) -> int:
    from coachforge_launcher.demo import run_demo

    return run_demo(train_examples=args.train_examples, eval_examples=args.eval_examples, epochs=args.epochs,
                    seed=args.seed)


def cmd_prepare_model(args: argparse.Namespace) -> int:
    from coachforge_launcher.models import prepare_base_model

    print(prepare_base_model(PlatformSettings().models_dir))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from coachforge_launcher.serve import serve

    serve(args.service, args.host, args.http_port, args.grpc_port, args.metrics_port)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from coachforge_launcher.serve import migrate

    migrate()
    return 0


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    def cell(value: Any) -> str:
        if isinstance(value, list):
            return ",".join(value)
        if isinstance(value, int) and value > 1_000_000_000:
            import datetime

            return datetime.datetime.fromtimestamp(value, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return "-" if value in (None, "") else str(value)

    table = [columns] + [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _admin(command: str, action: Any) -> int:
    """Run ``action(db)`` on the platform's database (the one the services use, straight, as
    ``coachforge migrate`` does); typed errors become one line and status 1."""
    from coachforge_shared.db import Database
    from coachforge_shared.errors import CoachForgeError

    db = Database(PlatformSettings().resolved_database_url)
    try:
        action(db)
    except CoachForgeError as err:
        print(f"coachforge {command}: {err.message}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    return 0


def cmd_tenants_create(args: argparse.Namespace) -> int:
    from coachforge_shared import auth

    return _admin("tenants create", lambda db: print(auth.new_tenant(db, args.name, args.display_name)["id"]))


def cmd_tenants_list(args: argparse.Namespace) -> int:
    from coachforge_shared import auth

    return _admin("tenants list", lambda db: _print_table(auth.list_tenants(db), ["id", "name", "created_at"]))


def _limit(text: str) -> float | None:
    """A limit given on the command line: a number of at least 0 (0: no limit) or "default"."""
    if text == "default":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'default', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a limit is at least 0 (0: no limit)")
    return value


def cmd_tenants_limits(args: argparse.Namespace) -> int:
    from coachforge_shared import auth

    changes = {name: getattr(args, name) for name in auth.LIMIT_FIELDS if getattr(args, name) is not _UNSET}
    changes = {k: (v if v is None or k == "max_cost_usd_per_1_day" else int(v)) for k, v in changes.items()}

    def show(db: Any) -> None:
        limits = auth.set_tenant_limits(db, args.name, changes) if changes else auth.tenant_limits(db, args.name)
        for name in auth.LIMIT_FIELDS:
            value = limits[name]
            print(f"{name}: {'default' if value is None else ('none' if value == 0 else value)}")

    return _admin("tenants limits", show)


_UNSET: Any = object()


def cmd_keys_create(args: argparse.Namespace) -> int:
    from coachforge_shared import auth

    def create(db: Any) -> None:
        created, key = auth.create_api_key(db, args.tenant, name=args.name, scopes=args.scopes)
        print(key)
        print(f"API key {created['id']} of tenant {created['tenant']} with scopes {','.join(created['scopes'])}; "
              "it is shown this once (only its hash is kept).", file=sys.stderr)

    return _admin("keys create", create)


def cmd_keys_list(args: argparse.Namespace) -> int:
    from coachforge_shared import auth

    columns = ["id", "tenant", "name", "prefix", "scopes", "created_at", "last_used_at", "revoked_at"]
    return _admin("keys list", lambda db: _print_table(auth.list_api_keys(db, args.tenant), columns))


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from coachforge_shared import auth

    def revoke(db: Any) -> None:
        revoked = auth.revoke_api_key(db, args.id)
        print(f"revoked {revoked['id']} of tenant {revoked['tenant']}; running services stop accepting it within "
              f"{PlatformSettings().api_key_cache_s:g} s (their key cache)")

    return _admin("keys revoke", revoke)


def cmd_coach_eval(args: argparse.Namespace) -> int:
    """The Polarize coach scenarios as a run of their stored eval (``polarize.scenarios``): the
    evaluator samples ``args.model`` on each scenario's prompt and grades the answers with the
    ``polarize_coach`` grader; this prints the table of the output items."""
    import time

    import openai
    from tqdm import tqdm

    from polarize import scenarios
    from polarize.synthetic import DEFAULT_TOKEN_BUDGET, approximate_tokens

    if args.variants < 1:
        print("coachforge coach eval: --variants must be at least 1", file=sys.stderr)
        return 2
    if args.max_answer_tokens < 1:
        print("coachforge coach eval: --max-answer-tokens must be at least 1", file=sys.stderr)
        return 2
    api = _stack_api(args.base_url, args.api_key)
    if api is None:
        return 2
    base_url, api_key = api
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=2, timeout=300)
    try:
        found = client.models.retrieve(args.model)
        base_model = str((found.model_extra or {}).get("base_model") or found.id)
        # The coach fits the context into its token budget with the base model's tokenizer; without
        # that tokenizer here, the tokens are estimated from the characters.
        tokenizer_file = PlatformSettings().models_dir / base_model / "tokenizer.json"
        try:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(tokenizer_file)) if tokenizer_file.is_file() else None
        except ImportError:
            tokenizer = None
        if tokenizer is None:
            print(f"coachforge coach eval: no tokenizer of {base_model} at {tokenizer_file}; prompt tokens are "
                  "estimated (~2 characters a token), so a context may be summarised differently than the "
                  "coach would", file=sys.stderr)

        def count_tokens(text: str) -> int:
            tokens: int = (approximate_tokens(text) if tokenizer is None
                           else len(tokenizer.encode(text, add_special_tokens=False).ids))
            return tokens

        counted_by = base_model if tokenizer is not None else "estimate"
        items = scenarios.scenario_items(args.variants, count_tokens=count_tokens, budget=DEFAULT_TOKEN_BUDGET)

        eval_id = next((e.id for e in client.evals.list(order="desc", limit=100)
                        if scenarios.is_scenario_eval(e.metadata)), None)
        if eval_id is None:
            eval_id = client.evals.create(**scenarios.eval_definition()).id
            print(f"created eval {eval_id} ({scenarios.EVAL_NAME})", file=sys.stderr)
        run: Any = client.evals.runs.create(
            eval_id, name=f"coach eval {args.model}", data_source=scenarios.run_data_source(
                args.model, items, max_completion_tokens=args.max_answer_tokens),
            metadata={"kind": scenarios.EVAL_KIND, "variants": str(args.variants), "tokens": counted_by,
                      "token_budget": str(DEFAULT_TOKEN_BUDGET)})
        with tqdm(total=run.result_counts.total, desc=f"coach eval {args.model}", unit="item",
                  disable=None) as bar:
            try:
                while run.status not in ("completed", "failed", "canceled"):
                    time.sleep(1)
                    run = client.evals.runs.retrieve(run.id, eval_id=eval_id)
                    counts = run.result_counts
                    bar.update(counts.passed + counts.failed + counts.errored - bar.n)
            except KeyboardInterrupt:
                client.evals.runs.cancel(run.id, eval_id=eval_id)
                print(f"\ncanceled run {run.id}", file=sys.stderr)
                return 130
        output_items = [it.to_dict(warnings=False)
                        for it in client.evals.runs.output_items.list(run.id, eval_id=eval_id, limit=100)]
    except openai.APIConnectionError as err:
        print(f"coachforge coach eval: cannot reach {base_url}: {err}", file=sys.stderr)
        return 1
    except openai.APIStatusError as err:
        print(f"coachforge coach eval: {err.status_code}: {err.message}", file=sys.stderr)
        return 1
    print(scenarios.format_report(args.model, run.to_dict(warnings=False), output_items))
    print(f"\nrun {run.id} of eval {eval_id}; another model on the same items: coachforge models compare "
          f"{args.model} OTHER --eval {eval_id} --like {run.id}")
    if run.status != "completed":
        error = run.error.message if run.error else ""
        print(f"coachforge coach eval: run {run.id} {run.status}{': ' + error if error else ''}", file=sys.stderr)
        return 1
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    """Synthetic Polarize coach examples: to a file or stdout (generated here), or generated by the
    running stack's dataset service and stored there as an uploaded file (``--upload``)."""
    if args.count < 1:
        print("coachforge data synth: --count must be at least 1", file=sys.stderr)
        return 2
    if not args.upload:
        from coachforge_dataset.service import synthetic_jsonl

        text = synthetic_jsonl(args.count, args.seed)
        if args.output in (None, "-"):
            sys.stdout.write(text)
        else:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text)
            print(f"wrote {args.count} examples to {args.output}", file=sys.stderr)
        return 0
    import httpx

    api = _stack_api(args.base_url, args.api_key)
    if api is None:
        return 2
    base, key = api
    try:
        response = httpx.post(f"{base}/datasets/synthetic", headers={"Authorization": f"Bearer {key}"},
                              json={"count": args.count, "seed": args.seed}, timeout=600)
    except httpx.HTTPError as err:
        print(f"coachforge data synth: cannot reach {base}: {err}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"coachforge data synth: {response.status_code}: {response.text}", file=sys.stderr)
        return 1
    print(response.json()["id"])
    return 0


def _stack_api(base_url: str | None, api_key: str | None) -> tuple[str, str] | None:
    """The stack's OpenAI base URL (…/v1) and an API key: the ones given, else this machine's."""
    platform, stack = PlatformSettings(), StackSettings()
    key_file = platform.data_dir / "api-key"
    key = api_key or platform.api_key or (key_file.read_text().strip() if key_file.exists() else "")
    if not key:
        print("No API key: pass --api-key, set COACHFORGE_API_KEY or start the stack once.", file=sys.stderr)
        return None
    base = (base_url or f"http://{stack.host}:{stack.http_port}").rstrip("/")
    return (base if base.endswith("/v1") else f"{base}/v1"), key


def cmd_models_compare(args: argparse.Namespace) -> int:
    import httpx
    import openai

    from coachforge_launcher.compare import compare, format_table

    api = _stack_api(args.base_url, args.api_key)
    if api is None:
        return 2
    base, key = api
    client = openai.OpenAI(base_url=base, api_key=key, max_retries=2, timeout=300)
    try:
        with httpx.Client(base_url=base + "/", headers={"Authorization": f"Bearer {key}"}, timeout=300) as http:
            result = compare(client, http, args.eval, args.model_a, args.model_b, like=args.like,
                             reuse=args.reuse, progress=not args.quiet)
    except (openai.APIConnectionError, httpx.ConnectError) as err:
        print(f"coachforge models compare: cannot reach {base}: {err}", file=sys.stderr)
        return 1
    except openai.APIStatusError as err:
        print(f"coachforge models compare: {err.status_code}: {err.message}", file=sys.stderr)
        return 1
    print(format_table(result))
    return 0


def _broker(bootstrap: str | None) -> str:
    """The broker to talk to: the one given, else the one this machine's stack uses (the embedded
    broker on the stack's port, or COACHFORGE_KAFKA_BOOTSTRAP when the stack uses an external one)."""
    if bootstrap:
        return bootstrap
    platform, stack = PlatformSettings(), StackSettings()
    # As coachforge_launcher.stack.external_broker decides (not imported: a service image has the
    # CLI without the all-in-one's dependencies).
    external = "kafka_bootstrap" in platform.model_fields_set
    return platform.kafka_bootstrap if external else f"{stack.host}:{stack.broker_port}"


def _dead_letters(args: argparse.Namespace, command: str) -> list[dead_letters.Letter] | None:
    from kafka.errors import KafkaError

    bootstrap = _broker(args.bootstrap)
    try:
        return dead_letters.read(bootstrap, consumer=args.consumer, event_type=getattr(args, "type", None))
    except (KafkaError, TimeoutError) as err:
        print(f"coachforge events {command}: cannot read the dead letters from {bootstrap}: {err}", file=sys.stderr)
        return None


def cmd_events_dead_letters(args: argparse.Namespace) -> int:
    import json

    if args.limit < 1:
        print("coachforge events dead-letters: --limit must be at least 1", file=sys.stderr)
        return 2
    letters = _dead_letters(args, "dead-letters")
    if letters is None:
        return 1
    letters = letters[-args.limit:]
    if args.json:
        print(json.dumps([letter.as_dict() for letter in letters], indent=2))
        return 0
    for letter in letters:
        d = letter.as_dict()
        error = f"{d['error_type']}: {d['error_message']}".replace("\n", " ")
        print(f"{d['failed_at']}  {d['consumer']}  {d['event_type'] or '(undecodable)'}  "
              f"{d['event_id'] or d['topic'] + '/' + str(d['partition']) + '@' + str(d['offset'])}  "
              f"{d['attempts']} attempt(s)  {error}")
    if not letters:
        print("no dead letters", file=sys.stderr)
    return 0


def cmd_events_replay(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    if not args.all and not args.event_id:
        print("coachforge events replay: say which dead letters: --event-id ID … or --all", file=sys.stderr)
        return 2
    letters = _dead_letters(args, "replay")
    if letters is None:
        return 1
    if args.event_id:
        wanted = set(args.event_id)
        letters = [letter for letter in letters if letter.letter.event_id in wanted]
        missing = wanted - {letter.letter.event_id for letter in letters}
        if missing:
            print(f"coachforge events replay: no dead letter of event(s) {', '.join(sorted(missing))}"
                  f"{' of consumer ' + args.consumer if args.consumer else ''}", file=sys.stderr)
            return 1
    bootstrap = _broker(args.bootstrap)
    try:
        sent = dead_letters.replay(bootstrap, letters)
    except KafkaError as err:
        print(f"coachforge events replay: cannot publish to {bootstrap}: {err}", file=sys.stderr)
        return 1
    for letter in sent:
        dl = letter.letter
        print(f"replayed {dl.event_id or '(undecodable record)'} to {dl.topic}")
    print(f"{len(sent)} record(s) replayed", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="coachforge",
        description="CoachForge: fine-tune LoRA adapters on your app's conversations and serve them "
                    "behind an OpenAI-compatible API. Settings come from COACHFORGE_* environment variables.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start the all-in-one stack in the foreground (Ctrl-C stops it)").set_defaults(
        func=cmd_run)
    demo = sub.add_parser("demo", help="start the stack, fine-tune on synthetic Polarize coach data, compare "
                                       "base vs fine-tuned, stop the stack")
    demo.add_argument("--train-examples", type=int, default=80,
                      help="synthetic training examples (default 80; about 5 s per optimizer step of 4 on 2 cores)")
    demo.add_argument("--eval-examples", type=int, default=24, help="held-out prompts to compare on (default 24)")
    demo.add_argument("--epochs", type=int, default=2,
                      help="training epochs (default 2: a third adds nothing on the demo's data, see demo.py)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the synthetic data (default 7)")
    demo.set_defaults(func=cmd_demo)
    serve = sub.add_parser("serve", help="run one service (REST, gRPC, its event consumers) in this process, "
                                         "as on Kubernetes")
    serve.add_argument("service", choices=sorted(runtime.available()),
                       help="an installed service (entry point group coachforge.services)")
    serve.add_argument("--host", default="0.0.0.0", help="interface to bind (default 0.0.0.0)")
    serve.add_argument("--http-port", type=int, default=8000, help="REST port (default 8000)")
    serve.add_argument("--grpc-port", type=int, default=50051, help="gRPC port (default 50051)")
    serve.add_argument("--metrics-port", type=int, default=9400,
                       help="Prometheus metrics port, apart from the REST port (default 9400)")
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("migrate", help="upgrade the database to the latest schema; create the default tenant and "
                                   "register COACHFORGE_API_KEY if set").set_defaults(func=cmd_migrate)
    coach = sub.add_parser("coach", help="Polarize coach tools").add_subparsers(dest="coach_command", required=True)
    coach_eval = coach.add_parser("eval", help="run a model on the coach scenarios (fresh, overreached, sick, "
                                                "poor sleep, key session week, taper), a stored eval of the "
                                                "stack's evaluator, and print per scenario whether the answer was "
                                                "a valid modification, safe and moved the week the expected way, "
                                                "the pass rates and the run id")
    coach_eval.add_argument("--model", required=True, help="model id or avatar to evaluate")
    coach_eval.add_argument("--variants", type=int, default=2, help="variants per scenario (default 2: 12 items)")
    coach_eval.add_argument("--max-answer-tokens", type=int, default=360,
                            help="most tokens of each answer (default 360, the coach service's; a cut answer is "
                                 "invalid JSON)")
    coach_eval.add_argument("--base-url", default=None, help="the stack's URL (default: this machine's stack)")
    coach_eval.add_argument("--api-key", default=None, help="API key (default: COACHFORGE_API_KEY or the stored key)")
    coach_eval.set_defaults(func=cmd_coach_eval)
    models = sub.add_parser("models", help="model tools").add_subparsers(dest="models_command", required=True)
    compare = models.add_parser(
        "compare", help="run two models on the same items of an eval and print, per testing criterion, both pass "
                        "rates (Wilson 95%% intervals), the paired difference with an exact McNemar p-value and "
                        "a better/worse verdict, then latency and throughput",
        description="The items, input messages and sampling parameters come from a reference run of the eval "
                    "(--like, default its newest completed completions run).")
    compare.add_argument("model_a", help="the baseline: a base model, ft: model id or avatar")
    compare.add_argument("model_b", help="the model compared against it")
    compare.add_argument("--eval", required=True, help="eval id (eval-…)")
    compare.add_argument("--like", default=None, help="reference run whose items and settings to use")
    compare.add_argument("--reuse", action="store_true",
                         help="reuse a completed earlier comparison run of a model on the same reference")
    compare.add_argument("--quiet", action="store_true", help="no progress bar")
    compare.add_argument("--base-url", default=None, help="the stack's URL (default: this machine's stack)")
    compare.add_argument("--api-key", default=None, help="API key (default: COACHFORGE_API_KEY or the stored key)")
    compare.set_defaults(func=cmd_models_compare)
    client.register(sub, models)
    tenants = sub.add_parser(
        "tenants", help="tenants (the database of COACHFORGE_DATABASE_URL / DATABASE_URL, as the services use)"
    ).add_subparsers(dest="tenants_command", required=True)
    tenant_create = tenants.add_parser("create", help="create a tenant")
    tenant_create.add_argument("name", help="tenant id: lower-case letters, digits, '-' and '_'")
    tenant_create.add_argument("--display-name", default=None, help="display name (default: the id)")
    tenant_create.set_defaults(func=cmd_tenants_create)
    tenants.add_parser("list", help="list the tenants").set_defaults(func=cmd_tenants_list)
    tenant_limits = tenants.add_parser(
        "limits", help="show or change a tenant's limits on inference",
        description="Show a tenant's rate limits and daily quotas, or change those given. Each is a number (0: no "
                    "limit) or 'default' (the deployment's COACHFORGE_INFERENCE_DEFAULT_MAX_… setting). Inference "
                    "applies a change within its limits cache time (COACHFORGE_INFERENCE_LIMITS_CACHE_S, 5 s).")
    tenant_limits.add_argument("name", help="the tenant's id")
    for flag, dest, what in (("--requests-per-minute", "max_requests_per_1_minute", "requests per minute"),
                             ("--tokens-per-minute", "max_tokens_per_1_minute",
                              "tokens (prompt + completion) per minute"),
                             ("--tokens-per-day", "max_tokens_per_1_day", "tokens per UTC day"),
                             ("--cost-per-day", "max_cost_usd_per_1_day", "US dollars per UTC day")):
        tenant_limits.add_argument(flag, dest=dest, type=_limit, default=_UNSET, metavar="N", help=what)
    tenant_limits.set_defaults(func=cmd_tenants_limits)
    keys = sub.add_parser("keys", help="API keys: random (32 bytes), shown once, stored hashed").add_subparsers(
        dest="keys_command", required=True)
    key_create = keys.add_parser("create", help="create an API key and print it (the only time it is shown)")
    key_create.add_argument("--tenant", required=True, help="the tenant the key acts for")
    key_create.add_argument("--name", default="", help="what the key is for")
    key_create.add_argument("--scopes", default="read,write",
                            help="comma separated: read (list, chat), write (upload, train, activate), admin "
                                 "(keys, tenants) (default read,write)")
    key_create.set_defaults(func=cmd_keys_create)
    key_list = keys.add_parser("list", help="list API keys (never the keys themselves)")
    key_list.add_argument("--tenant", default=None, help="only this tenant's keys")
    key_list.set_defaults(func=cmd_keys_list)
    key_revoke = keys.add_parser("revoke", help="revoke an API key")
    key_revoke.add_argument("id", help="the key's id (key-…)")
    key_revoke.set_defaults(func=cmd_keys_revoke)
    sub.add_parser("prepare-model", help="convert the bundled base model once and print its folder").set_defaults(
        func=cmd_prepare_model)
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="generate synthetic Polarize coach examples (OpenAI chat JSONL)")
    synth.add_argument("--count", type=int, required=True, help="number of examples")
    synth.add_argument("--seed", type=int, default=0, help="seed (same count and seed, same examples; default 0)")
    target = synth.add_mutually_exclusive_group()
    target.add_argument("--output", help="write to this file ('-' or unset: standard output)")
    target.add_argument("--upload", action="store_true",
                        help="have the running stack generate them and store them as a file; prints the file id")
    synth.add_argument("--base-url", help="API base URL for --upload (default: the stack's, http://HOST:PORT/v1)")
    synth.add_argument("--api-key", default=None,
                       help="API key for --upload (default: COACHFORGE_API_KEY or the stored key)")
    synth.set_defaults(func=cmd_data_synth)
    events = sub.add_parser(
        "events", help="the event bus: dead letters (events a consumer group gave up on) and their replay",
        description="A consumer retries a failing event 5 times (backoff 0.2 s doubling), then publishes it to "
                    "the dead-letter topic with the error, and goes on. These commands read that topic from the "
                    "start (no consumer group is joined) and send events back to their topics.").add_subparsers(
        dest="events_command", required=True)
    dead = events.add_parser(
        "dead-letters", help="list dead letters, oldest first: when, consumer group, event type, event id, "
                             "attempts, error")
    dead.add_argument("--consumer", metavar="GROUP",
                      help="only those of this consumer group (e.g. coachforge-inference-usage)")
    dead.add_argument("--type", metavar="TYPE", help="only events of this type (e.g. usage.recorded)")
    dead.add_argument("--limit", type=int, default=100, metavar="N", help="show the newest N (default 100)")
    dead.add_argument("--json", action="store_true", help="print a JSON array instead (with topic, partition, "
                                                          "offset and the dead letter's own id)")
    dead.add_argument("--bootstrap", metavar="HOST:PORT",
                      help="Kafka bootstrap servers (default: this machine's stack's broker)")
    dead.set_defaults(func=cmd_events_dead_letters)
    replay = events.add_parser(
        "replay", help="publish dead-lettered events again, unchanged, to their original topics",
        description="Each consumer group skips an event it already handled, so replaying is safe: a group "
                    "whose handler works now handles the event once, the others ignore it. Dead letters stay "
                    "listed after a replay (the topic is a log).")
    replay.add_argument("--consumer", metavar="GROUP", help="only dead letters of this consumer group")
    replay.add_argument("--event-id", nargs="+", metavar="ID", help="the event id(s) to replay")
    replay.add_argument("--all", action="store_true", help="replay every dead letter (of --consumer, if given)")
    replay.add_argument("--bootstrap", metavar="HOST:PORT",
                        help="Kafka bootstrap servers (default: this machine's stack's broker)")
    replay.set_defaults(func=cmd_events_replay)
    args = parser.parse_args(argv)
    try:
        platform = PlatformSettings()
    except ValidationError as err:
        for problem in err.errors():
            print(f"coachforge: {problem['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    # The demo and the client commands print their own progress; library INFO lines would bury it.
    quiet = args.command == "demo" or getattr(args, "client_command", False)
    configure_logging("WARNING" if quiet else platform.log_level, json=platform.log_json)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
