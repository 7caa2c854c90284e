"""The client commands of ``coachforge``: ``chat``, ``jobs list|follow``, ``models list|export`` and
``usage``. Thin clients of the public API through the official ``openai`` SDK (``usage`` and
``models export``, which the SDK lacks, with plain HTTP calls through it; an export's file streamed
with the standard library), for any base URL and key: ``--base-url``/``--api-key``, else
``OPENAI_BASE_URL``/``OPENAI_API_KEY``, else this machine's stack and its stored key."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import openai
from openai import OpenAI
from tqdm import tqdm

FINAL = ("succeeded", "failed", "cancelled")


# -- connection ------------------------------------------------------------------------------------
def connect(args: argparse.Namespace) -> OpenAI | None:
    """An SDK client for the API the arguments (or the environment, or this machine's stack) name;
    ``None`` after printing why there is no key."""
    from coachforge_launcher.cli import _stack_api

    api = _stack_api(args.base_url or os.environ.get("OPENAI_BASE_URL"),
                     args.api_key or os.environ.get("OPENAI_API_KEY"))
    if api is None:
        return None
    base, key = api
    return OpenAI(base_url=base, api_key=key, max_retries=2, timeout=600)


def _run(command: str, action: Callable[[OpenAI], int], args: argparse.Namespace) -> int:
    """Run one command's ``action`` with a client; API and connection errors become one line on
    stderr and exit code 1 (2 for a missing key)."""
    client = connect(args)
    if client is None:
        return 2
    try:
        return action(client)
    except openai.APIConnectionError as err:
        print(f"coachforge {command}: cannot reach {client.base_url}: {err}", file=sys.stderr)
    except openai.APIStatusError as err:
        print(f"coachforge {command}: {err.status_code}: {_message(err)}", file=sys.stderr)
    return 1


def _message(err: openai.APIStatusError) -> str:
    body = err.body if isinstance(err.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    return str(error.get("message") or err.message) if isinstance(error, dict) else err.message


# -- tables ----------------------------------------------------------------------------------------
def _when(seconds: int | float | None) -> str:
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M")


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], out: IO[str] | None = None) -> None:
    """Rows under a header, columns padded to their widest cell."""
    out = out or sys.stdout
    cells = [[str(c) for c in header], *[["-" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


# -- chat ------------------------------------------------------------------------------------------
def stream_answer(client: OpenAI, model: str, messages: list[dict[str, str]], *, temperature: float | None,
                  max_tokens: int | None, out: IO[str]) -> tuple[str, str, Any]:
    """Stream one answer to ``out`` as it comes; returns (text, the model that answered, usage)."""
    extra: dict[str, Any] = {}
    if temperature is not None:
        extra["temperature"] = temperature
    if max_tokens is not None:
        extra["max_tokens"] = max_tokens
    stream = client.chat.completions.create(model=model, messages=messages, stream=True,  # type: ignore[arg-type]
                                            stream_options={"include_usage": True}, **extra)
    parts: list[str] = []
    answered_by, usage = model, None
    for chunk in stream:
        answered_by = chunk.model or answered_by
        usage = chunk.usage or usage
        for choice in chunk.choices:
            if choice.delta.content:
                parts.append(choice.delta.content)
                out.write(choice.delta.content)
                out.flush()
    out.write("\n")
    return "".join(parts), answered_by, usage


def _lines(stream: IO[str], interactive: bool) -> Iterator[str]:
    while True:
        if interactive:
            try:
                line = input("you> ")
            except EOFError:
                print()
                return
        else:
            line = stream.readline()
            if not line:
                return
        yield line.rstrip("\n")


def cmd_chat(args: argparse.Namespace) -> int:
    def chat(client: OpenAI) -> int:
        messages: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
        if args.message is not None:
            turns: Iterator[str] = iter([args.message])
        else:
            interactive = sys.stdin.isatty()
            if interactive:
                print(f"Chatting with {args.model} at {client.base_url} (/reset clears the conversation, "
                      "/exit or Ctrl-D quits).")
            turns = _lines(sys.stdin, interactive)
        for text in turns:
            if not text.strip():
                continue
            if text.strip() in ("/exit", "/quit"):
                break
            if text.strip() == "/reset":
                messages[:] = messages[:1] if args.system else []
                print("(conversation cleared)")
                continue
            messages.append({"role": "user", "content": text})
            answer, answered_by, usage = stream_answer(client, args.model, messages, temperature=args.temperature,
                                                       max_tokens=args.max_tokens, out=sys.stdout)
            messages.append({"role": "assistant", "content": answer})
            if args.verbose and usage is not None:
                print(f"[{answered_by}: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion "
                      "tokens]", file=sys.stderr)
        return 0

    return _run("chat", chat, args)


# -- jobs ------------------------------------------------------------------------------------------
def cmd_jobs_list(args: argparse.Namespace) -> int:
    def jobs(client: OpenAI) -> int:
        page = client.fine_tuning.jobs.list(limit=args.limit)
        table([(j.id, j.status, j.model, j.fine_tuned_model, _when(j.created_at), _when(j.finished_at))
               for j in page.data], ("ID", "STATUS", "MODEL", "FINE-TUNED MODEL", "CREATED", "FINISHED"))
        return 0

    return _run("jobs list", jobs, args)


def follow_job(client: OpenAI, job_id: str, *, poll_seconds: float = 2.0, out: IO[str] | None = None,
               disable: bool = False, desc: str | None = None, ncols: int | None = None, messages: bool = True,
               on_metrics: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """Show a progress bar of a fine-tuning job (step of total, training loss, tokens/s, ETA) and
    its messages (unless ``messages`` is false) until it ends; returns the finished job.
    ``on_metrics`` sees each metrics event's data (step, losses, tokens/s) as it arrives."""
    seen: set[str] = set()
    out = out or sys.stderr
    job = client.fine_tuning.jobs.retrieve(job_id)
    with tqdm(desc=desc or job_id, unit="step", file=out, disable=disable, ncols=ncols,
              dynamic_ncols=ncols is None) as bar:
        while True:
            events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
            for ev in reversed(events):
                if ev.id in seen:
                    continue
                seen.add(ev.id)
                data = ev.data if isinstance(ev.data, dict) else None
                if ev.type == "metrics" and data:
                    if on_metrics is not None:
                        on_metrics(data)
                    bar.total = data.get("total_steps") or bar.total
                    bar.n = int(data.get("step") or bar.n)
                    postfix = {"loss": f"{data.get('train_loss') or 0:.3f}"}
                    if data.get("valid_loss") is not None:
                        postfix["val"] = f"{data['valid_loss']:.3f}"
                    if data.get("tokens_per_second"):
                        postfix["tok/s"] = f"{data['tokens_per_second']:.0f}"
                    bar.set_postfix(postfix)
                    bar.refresh()
                elif messages and not disable:
                    bar.write(f"{_when(ev.created_at)}  {ev.message}", file=out)
            job = client.fine_tuning.jobs.retrieve(job_id)
            if job.status in FINAL:
                if job.status == "succeeded" and bar.total:
                    bar.n = bar.total
                    bar.refresh()
                return job
            time.sleep(poll_seconds)


def cmd_jobs_follow(args: argparse.Namespace) -> int:
    def follow(client: OpenAI) -> int:
        job = follow_job(client, args.id, disable=args.quiet)
        if job.status == "succeeded":
            print(f"{job.id} succeeded: {job.fine_tuned_model}")
            return 0
        error = f": {job.error.message}" if job.error and job.error.message else ""
        print(f"{job.id} {job.status}{error}", file=sys.stderr)
        return 1

    return _run("jobs follow", follow, args)


# -- models and usage ------------------------------------------------------------------------------
def cmd_models_list(args: argparse.Namespace) -> int:
    def models(client: OpenAI) -> int:
        table([(m.id, m.owned_by, _when(m.created)) for m in client.models.list()], ("ID", "OWNED BY", "CREATED"))
        return 0

    return _run("models list", models, args)


EXPORT_FINAL = ("succeeded", "failed")


def _download(client: OpenAI, path: str, target: Path, sha256: str, size: int | None, *, quiet: bool) -> None:
    """Stream ``path`` of the API into ``target`` (through ``<target>.part``, renamed once complete),
    checking its sha256; ``OSError`` when it does not match."""
    url = str(client.base_url).rstrip("/") + path
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {client.api_key}",
                                                   "Accept": "application/octet-stream"})
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=600) as response, partial.open("wb") as out, \
                tqdm(total=size, unit="B", unit_scale=True, desc=target.name, disable=quiet, file=sys.stderr) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if digest.hexdigest() != sha256:
            raise OSError(f"the downloaded file does not match its sha256 {sha256}")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def cmd_models_export(args: argparse.Namespace) -> int:
    def export(client: OpenAI) -> int:
        base = f"/models/{urllib.parse.quote(args.model, safe=':')}/exports"
        body = {k: v for k, v in (("format", args.format), ("quantization", args.quantization),
                                  ("avatar", args.avatar)) if v}
        job = cast("dict[str, Any]", client.post(base, body=body, cast_to=object))
        status = ""
        while job["status"] not in EXPORT_FINAL:
            if job["status"] != status and not args.quiet:
                print(f"{job['id']} {job['status']}", file=sys.stderr)
            status = job["status"]
            time.sleep(args.poll_seconds)
            job = cast("dict[str, Any]", client.get(f"{base}/{job['id']}", cast_to=object))
        if job["status"] == "failed":
            error = job.get("error") or {}
            print(f"coachforge models export: {job['id']} failed: {error.get('message', '')}", file=sys.stderr)
            return 1
        target = Path(args.output or job["filename"])
        if target.is_dir():
            target = target / job["filename"]
        try:
            _download(client, f"{base}/{job['id']}/content", target, job["sha256"], job.get("bytes"),
                      quiet=args.quiet)
        except urllib.error.HTTPError as err:
            print(f"coachforge models export: {err.code}: {_http_message(err)}", file=sys.stderr)
            return 1
        except (OSError, urllib.error.URLError) as err:
            print(f"coachforge models export: cannot download {job['id']}: {err}", file=sys.stderr)
            return 1
        print(f"{target}  {job['bytes']} bytes  sha256 {job['sha256']}")
        return 0

    return _run("models export", export, args)


def _http_message(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read() or b"{}")
    except ValueError:
        return str(err.reason)
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("message")) if isinstance(error, dict) else str(err.reason)


def cmd_usage(args: argparse.Namespace) -> int:
    def usage(client: OpenAI) -> int:
        params = {k: v for k, v in (("start_date", args.start_date), ("end_date", args.end_date),
                                    ("avatar", args.avatar), ("model", args.model)) if v}
        body: dict[str, Any] = client.get("/usage", cast_to=object, options={"params": params})  # type: ignore[assignment]
        table([(row["date"], row.get("model"), row.get("avatar") or "-", row.get("purpose", "-"), row["messages"],
                row["input_tokens"], row["output_tokens"], f"{row['cost_usd']:.6f}") for row in body["data"]],
              ("DATE", "MODEL", "AVATAR", "PURPOSE", "REQUESTS", "INPUT TOKENS", "OUTPUT TOKENS", "COST USD"))
        totals = body["totals"]
        print(f"total: {totals['messages']} requests, {totals['input_tokens']} input and "
              f"{totals['output_tokens']} output tokens, ${totals['cost_usd']:.6f}")
        return 0

    return _run("usage", usage, args)


# -- argument parsing ------------------------------------------------------------------------------
def _api_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default=None,
                        help="the API's URL (default: OPENAI_BASE_URL, else this machine's stack)")
    parser.add_argument("--api-key", default=None,
                        help="API key (default: OPENAI_API_KEY, COACHFORGE_API_KEY or the stack's stored key)")


def register(sub: Any, models: Any) -> None:
    """Add ``chat``, ``jobs``, ``usage`` to the ``coachforge`` subcommands ``sub`` and ``list`` and
    ``export`` to the ``models`` subcommands."""
    chat = sub.add_parser("chat", help="chat with a model or avatar, the answers streamed (interactive; reads "
                                       "one message per line when stdin is not a terminal)")
    chat.add_argument("model", help="base model, fine-tuned model id (ft:…) or avatar")
    chat.add_argument("--message", "-m", default=None, help="send this one message, print the answer and exit")
    chat.add_argument("--system", default=None, help="a system message that opens the conversation")
    chat.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the model's)")
    chat.add_argument("--max-tokens", type=int, default=None, help="longest answer, in tokens")
    chat.add_argument("--verbose", "-v", action="store_true", help="after each answer, print which model answered "
                                                                   "and its token usage to stderr")
    _api_arguments(chat)
    chat.set_defaults(func=cmd_chat, client_command=True)

    jobs = sub.add_parser("jobs", help="fine-tuning jobs").add_subparsers(dest="jobs_command", required=True)
    jobs_list = jobs.add_parser("list", help="the newest fine-tuning jobs: id, status, models, when")
    jobs_list.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    _api_arguments(jobs_list)
    jobs_list.set_defaults(func=cmd_jobs_list, client_command=True)
    follow = jobs.add_parser("follow", help="a progress bar of a job (step, loss, tokens/s, ETA) and its messages "
                                            "until it ends; exit code 0 when it succeeded")
    follow.add_argument("id", help="the job's id (ftjob-…)")
    follow.add_argument("--quiet", action="store_true", help="no progress bar, only the outcome")
    _api_arguments(follow)
    follow.set_defaults(func=cmd_jobs_follow, client_command=True)

    models_list = models.add_parser("list", help="the models you can use: base models, fine-tuned models, avatars")
    _api_arguments(models_list)
    models_list.set_defaults(func=cmd_models_list, client_command=True)
    export = models.add_parser(
        "export", help="export a fine-tuned model (POST /v1/models/{id}/exports), wait until it is made and "
                       "download it, its sha256 checked",
        description="Formats: adapter (the PEFT adapter, tar.gz), merged (base + adapter merged, safetensors with "
                    "tokenizer and chat template, tar.gz), gguf (one GGUF file), ollama (tar.gz with the GGUF and a "
                    "Modelfile: unpack it, then `ollama create NAME -f Modelfile` in its folder). The same export "
                    "asked for again is made once.")
    export.add_argument("model", help="the fine-tuned model id (ft:…)")
    export.add_argument("--format", required=True, choices=("adapter", "merged", "gguf", "ollama"),
                        help="what to export")
    export.add_argument("--quantization", default=None, choices=("f16", "q8_0", "q4_0"),
                        help="gguf and ollama: how the weights are stored (default f16)")
    export.add_argument("--avatar", default=None,
                        help="ollama: the avatar whose persona goes into the Modelfile (default: the avatar answering "
                             "with the model, if it has a persona)")
    export.add_argument("-o", "--output", default=None,
                        help="file (or folder) to write (default: the export's file name, in this folder)")
    export.add_argument("--poll-seconds", type=float, default=2.0, help="how often to look at the export (default 2)")
    export.add_argument("--quiet", action="store_true", help="no progress, only the outcome")
    _api_arguments(export)
    export.set_defaults(func=cmd_models_export, client_command=True)

    usage = sub.add_parser("usage", help="tokens and cost per day, model and avatar (GET /v1/usage)")
    usage.add_argument("--start-date", default=None, help="first day, YYYY-MM-DD, UTC (default: the first)")
    usage.add_argument("--end-date", default=None, help="last day, YYYY-MM-DD, UTC (default: the last)")
    usage.add_argument("--model", default=None, help="only this model")
    usage.add_argument("--avatar", default=None, help="only this avatar")
    _api_arguments(usage)
    usage.set_defaults(func=cmd_usage, client_command=True)
