"""Latency and throughput the inference service adds in front of the vLLM engine.

Starts the all-in-one stack (its own data dir and free ports), then sends the same chat
requests straight to the engine and through the inference service, in one run, at several
concurrency levels, and prints:

* p50/p99 latency of both paths, the added latency and the throughput ratio;
* the gateway's own time per request, as its ``server-timing`` header reports it: from the
  request's arrival in the application (after the HTTP server parsed its headers) to the answer
  ready, apart from waiting for the engine; the extra loopback hop is not in it;
* the CPU time the services process spends per gateway request (user + system, read from the
  OS): on a machine where client, gateway and engine share the cores, that CPU time is what the
  gateway takes from the engine, and it does not move with the scheduling noise that latencies do.

Then it makes 8 LoRA adapters (untrained: peft's get_peft_model + save_pretrained on the base
model), registers them through real ``job.succeeded`` events, and prints the gateway's throughput
with traffic spread over the 8 adapters vs all on one adapter (the engine holds ``--max-loras``
of them in a batch and swaps the rest).

With ``--engine-cpus`` (e.g. ``0``) the engine's threads are bound to those CPUs and the services
process and this client to the others, as in production where the engine has its own device: the
CPU engine's busy threads then no longer preempt the gateway, and the added latency is the
gateway's own.

With ``--by-thread``, a last run at concurrency 1 splits the services process's CPU per request
by thread (names read with ``py-spy dump``): the request path (the event loop) apart from the work
each request causes elsewhere (the usage consumer, the event producer's network thread).

With ``--store``, it runs only this instead: what ``store: true`` (with four metadata pairs) costs
the request path, against the same requests without ``store``, unary and streamed, through the same
gateway and engine. Requests go one at a time in blocks (``--store-block``), a block without
``store`` and one with it per pair (``--store-pairs``, which goes first drawn at random), and the
CPU time of each thread of the services process is read around each block from the kernel's
``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds, not clock ticks; the idle burn is subtracted).
The request path is the event loop's thread (uvicorn's main thread); the rest of the process
(the event producer's network thread, the ``completion.stored`` consumer writing the rows, the
usage consumer) is reported apart as "elsewhere". For each it prints the CPU per request off and
on, the paired differences (median and p95 over the pairs, mean with a 95% bootstrap interval),
the gateway's ``server-timing`` figure paired request by request (unary: it includes publishing;
a stream's stops at its first chunk), and whether the request path's growth meets the goal
(at most 0.3 ms: the upper end of the interval).

    .venv/bin/python bench/gateway_overhead.py [--requests 64] [--concurrency 1 8 32] [--max-tokens 8]
                                               [--adapters 8] [--adapter-concurrency 8] [--engine-cpus 0]
                                               [--by-thread]
    .venv/bin/python bench/gateway_overhead.py --store [--store-pairs 30] [--store-block 20] [--max-tokens 8]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from coachforge_launcher.models import BASE_MODEL_ID
from coachforge_launcher.settings import StackSettings
from coachforge_launcher.stack import Stack
from coachforge_shared.settings import PlatformSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drive(url: str, headers: dict[str, str], n: int, concurrency: int, max_tokens: int,
          models: tuple[str, ...] = (BASE_MODEL_ID,)) -> tuple[list[float], float, list[float]]:
    """Send ``n`` requests with ``concurrency`` in flight (request i asks ``models[i % len(models)]``);
    return per-request seconds, wall seconds and, from the gateway's ``server-timing`` header, the
    seconds each request spent in the gateway apart from the engine (empty for the engine)."""
    with httpx.Client(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as client:

        def one(i: int) -> tuple[float, float | None]:
            body = {"model": models[i % len(models)], "max_tokens": max_tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": "Name one endurance sport."}]}
            t = time.perf_counter()
            r = client.post(url, json=body, headers=headers)
            r.raise_for_status()
            elapsed = time.perf_counter() - t
            timing = re.search(r"gateway;dur=([0-9.]+)", r.headers.get("server-timing", ""))
            return elapsed, float(timing.group(1)) / 1e3 if timing else None

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, range(n)))
        wall = time.perf_counter() - started
        return [r[0] for r in results], wall, [r[1] for r in results if r[1] is not None]


def services_process(stack: Stack) -> psutil.Process:
    """The stack's services process (REST gateway included), a child of its supervisord."""
    assert stack.proc is not None
    for child in psutil.Process(stack.proc.pid).children(recursive=True):
        if "coachforge_launcher.app" in " ".join(child.cmdline()):
            return child
    raise RuntimeError("no services process under the stack's supervisord")


def pin(proc: psutil.Process, cpus: set[int]) -> None:
    """Bind every thread of ``proc`` to ``cpus`` (threads started later inherit it from theirs)."""
    for thread in proc.threads():
        os.sched_setaffinity(thread.id, cpus)


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def thread_cpu(proc: psutil.Process) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in proc.threads()}


def thread_names(proc: psutil.Process) -> dict[int, str]:
    """Python thread names by OS thread id, from ``py-spy dump``."""
    spy = Path(sys.executable).with_name("py-spy")
    out = subprocess.run([str(spy), "dump", "--pid", str(proc.pid)], capture_output=True, text=True).stdout
    names = {}
    for line in out.splitlines():
        if m := re.match(r'Thread (0x[0-9A-Fa-f]+|\d+) \(\w+\): "([^"]*)"', line):
            names[int(m.group(1), 0)] = m.group(2)
    return names


def cpu_by_thread(services: psutil.Process, gateway: str, auth: dict[str, str], n: int, max_tokens: int) -> None:
    """CPU per request of each thread of the services process, at concurrency 1, idle burn subtracted."""
    rest0, t0 = thread_cpu(services), time.perf_counter()
    time.sleep(15)
    rest1, rest_wall = thread_cpu(services), time.perf_counter() - t0
    _, wall, _ = drive(gateway, auth, n, 1, max_tokens)
    after = thread_cpu(services)
    names = thread_names(services)
    rows = sorted(((after[t] - rest1.get(t, 0.0) - (rest1.get(t, 0.0) - rest0.get(t, 0.0)) / rest_wall * wall)
                   * 1e3 / n, names.get(t, f"thread {t}")) for t in after)
    rows.reverse()
    print(f"\nservices process CPU per request by thread ({n} requests at concurrency 1; clock ticks of 10 ms, "
          f"so +-{10 / n:.2f} ms each):")
    for ms, name in rows:
        if ms >= 0.05:
            print(f"{ms:8.2f} ms  {name}")
    print(f"{sum(r[0] for r in rows):8.2f} ms  in all")


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


STORE_GOAL_MS = 0.3
BENCH_KEY = "cf-bench-" + "0" * 32
"""The request path's CPU that ``store: true`` may add per request."""

STORE_METADATA = {"athlete_id": "ath-00042", "source": "app", "screen": "week", "app_version": "4.2.0"}


def task_cpu(pid: int) -> dict[int, int]:
    """Nanoseconds each thread of process ``pid`` has run, from the kernel's schedstat (exact, where
    ``cpu_times`` counts clock ticks of 10 ms)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # the thread ended meanwhile
    return out


def chat_body(max_tokens: int, *, store: bool, stream: bool) -> dict[str, object]:
    body: dict[str, object] = {"model": BASE_MODEL_ID, "max_tokens": max_tokens, "temperature": 0,
                               "user": "athlete-42",
                               "messages": [{"role": "system", "content": "You are a concise endurance coach."},
                                            {"role": "user", "content": "Name one endurance sport."}]}
    if store:
        body["store"] = True
        body["metadata"] = dict(STORE_METADATA)
    if stream:
        body["stream"] = True
    return body


def send(client: httpx.Client, url: str, headers: dict[str, str], body: dict[str, object]) -> float:
    """One request, read to its end; the gateway's own seconds from its ``server-timing`` header."""
    if body.get("stream"):
        with client.stream("POST", url, json=body, headers=headers) as r:
            r.raise_for_status()
            for _ in r.iter_lines():
                pass
    else:
        r = client.post(url, json=body, headers=headers)
        r.raise_for_status()
    timing = re.search(r"gateway;dur=([0-9.]+)", r.headers.get("server-timing", ""))
    assert timing, "no server-timing header from the gateway"
    return float(timing.group(1)) / 1e3


def bootstrap_mean(values: list[float], rng: random.Random, rounds: int = 4000) -> tuple[float, float]:
    """A 95% bootstrap interval of the mean of ``values``."""
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(rounds))
    return means[int(rounds * 0.025)], means[int(rounds * 0.975) - 1]


def compare_store(services: psutil.Process, gateway: str, auth: dict[str, str], pairs: int, block: int,
                  max_tokens: int, modes: tuple[bool, ...] = (False, True)) -> None:
    """Store on vs off, in paired blocks (see the module's docstring), for each of ``modes``
    (``False``: unary, ``True``: streamed)."""
    pid = services.pid  # uvicorn's event loop runs in the main thread, whose id is the process's
    settle = 0.3  # after each block: the consumer writes what the block stored before the next reading
    rng = random.Random(0)
    with httpx.Client(timeout=300) as client:
        for stream in (False, True):  # warm-up: the first stored completion creates its topic, the consumer joins
            for store in (False, True, False, True):
                for _ in range(4):
                    send(client, gateway, auth, chat_body(max_tokens, store=store, stream=stream))
        time.sleep(3)
        before, t0 = task_cpu(pid), time.perf_counter()
        time.sleep(10)
        after, wall = task_cpu(pid), time.perf_counter() - t0
        idle_main = (after[pid] - before[pid]) / 1e9 / wall
        idle_rest = sum(after[t] - before.get(t, 0) for t in after if t != pid) / 1e9 / wall
        print(f"services process at rest: request path {idle_main * 1e3:.2f} ms CPU per second, elsewhere "
              f"{idle_rest * 1e3:.2f} (subtracted below)")
        print(f"store on (store: true, {len(STORE_METADATA)} metadata pairs) vs off: {pairs} pairs of blocks of "
              f"{block} requests at concurrency 1, {max_tokens} tokens each, base model {BASE_MODEL_ID}; CPU read from "
              "/proc/<pid>/task/<tid>/schedstat around each block")
        verdicts = []
        for stream in modes:
            cpu: dict[bool, list[tuple[float, float]]] = {False: [], True: []}  # (request path, elsewhere) ms/req
            timing: dict[bool, list[list[float]]] = {False: [], True: []}
            for _ in range(pairs):
                for store in rng.sample((False, True), 2):
                    body = chat_body(max_tokens, store=store, stream=stream)
                    before, t0 = task_cpu(pid), time.perf_counter()
                    own = [send(client, gateway, auth, body) for _ in range(block)]
                    time.sleep(settle)
                    after, wall = task_cpu(pid), time.perf_counter() - t0
                    main_s = (after[pid] - before[pid]) / 1e9 - idle_main * wall
                    rest_s = sum(after[t] - before.get(t, 0) for t in after if t != pid) / 1e9 - idle_rest * wall
                    cpu[store].append((main_s * 1e3 / block, rest_s * 1e3 / block))
                    timing[store].append(own)
            mode = "streamed" if stream else "unary"
            print(f"\n{mode}: ms per request      {'off':>7} {'on':>7}   on - off: {'median':>7} {'p95':>7} "
                  f"{'mean':>7}  [95% interval]")
            for i, name in enumerate(("request path CPU", "elsewhere CPU")):
                off = [c[i] for c in cpu[False]]
                on = [c[i] for c in cpu[True]]
                diffs = [b - a for a, b in zip(off, on, strict=True)]
                lo, hi = bootstrap_mean(diffs, rng)
                print(f"  {name:<24} {statistics.median(off):7.3f} {statistics.median(on):7.3f}   "
                      f"{'':>10}{statistics.median(diffs):+7.3f} {pct(diffs, 95):+7.3f} "
                      f"{statistics.fmean(diffs):+7.3f}  [{lo:+.3f}, {hi:+.3f}]")
                if i == 0:
                    verdicts.append((mode, statistics.fmean(diffs), hi))
            off_t = [x * 1e3 for b in timing[False] for x in b]
            on_t = [x * 1e3 for b in timing[True] for x in b]
            diffs = [b - a for a, b in zip(off_t, on_t, strict=True)]
            lo, hi = bootstrap_mean(diffs, rng)
            label = "server-timing gateway" + (" (to 1st chunk)" if stream else "")
            print(f"  {label:<24} {statistics.median(off_t):7.3f} {statistics.median(on_t):7.3f}   "
                  f"{'':>10}{statistics.median(diffs):+7.3f} {pct(diffs, 95):+7.3f} "
                  f"{statistics.fmean(diffs):+7.3f}  [{lo:+.3f}, {hi:+.3f}]  (request by request)")
        print()
        for mode, mean, hi in verdicts:
            print(f"goal, the request path's CPU grows by <= {STORE_GOAL_MS} ms with store ({mode}): "
                  f"{'met' if hi <= STORE_GOAL_MS else 'MISSED'} (mean {mean:+.3f} ms, upper end of the 95% "
                  f"interval {hi:+.3f} ms)")


def make_adapters(base_dir: Path, out: Path, count: int, kafka: str, gateway_root: str,
                  headers: dict[str, str]) -> list[str]:
    """``count`` untrained rank-8 adapters on the base model, registered through job.succeeded events."""
    import secrets

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from coachforge.trainer.v1 import trainer_pb2
    from coachforge_shared.events import EventPublisher

    tag = secrets.token_hex(3)
    publisher = EventPublisher(kafka, "bench")
    names = []
    for i in range(count):
        torch.manual_seed(i)
        base = AutoModelForCausalLM.from_pretrained(base_dir)
        peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                     init_lora_weights=False))
        path = out / f"adapter-{i}"
        peft_model.save_pretrained(path)
        name = f"ft:{BASE_MODEL_ID}:default:bench{i}:{tag}"
        publisher.publish("job.succeeded", trainer_pb2.JobSucceeded(
            job_id=f"ftjob-bench-{tag}-{i}", base_model=BASE_MODEL_ID, fine_tuned_model=name,
            adapter_uri=str(path), lora_rank=8, target_modules=["q_proj", "v_proj"]), "default")
        names.append(name)
    publisher.close()
    deadline = time.monotonic() + 120
    while True:
        listed = {m["id"] for m in httpx.get(f"{gateway_root}/v1/models", headers=headers).json()["data"]}
        if set(names) <= listed:
            return names
        if time.monotonic() > deadline:
            raise SystemExit(f"adapters not registered: {sorted(set(names) - listed)}")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64, help="requests per run (default 64)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens generated per request (default 8)")
    parser.add_argument("--adapters", type=int, default=8, help="adapters for the spread test (0 skips it)")
    parser.add_argument("--adapter-concurrency", type=int, default=8, help="concurrency of the spread test")
    parser.add_argument("--engine-cpus", default=None,
                        help="bind the engine to these CPUs (vLLM's VLLM_CPU_OMP_THREADS_BIND, e.g. 0 or 0-1) "
                             "and the gateway and this client to the others")
    parser.add_argument("--by-thread", action="store_true",
                        help="also split the services process's CPU per request by thread (needs py-spy)")
    parser.add_argument("--store", action="store_true",
                        help="instead of the runs above: the request path's CPU per request with store: true "
                             "(and metadata) vs without, unary and streamed, in paired blocks")
    parser.add_argument("--store-pairs", type=int, default=30,
                        help="with --store: pairs of blocks (one block off, one on) per mode (default 30)")
    parser.add_argument("--store-block", type=int, default=20,
                        help="with --store: requests per block (default 20)")
    parser.add_argument("--store-mode", choices=("both", "unary", "streamed"), default="both",
                        help="with --store: which requests to compare (default both)")
    args = parser.parse_args()
    env: dict[str, str] = {}
    if args.engine_cpus:
        env["VLLM_CPU_OMP_THREADS_BIND"] = args.engine_cpus
        lo, _, hi = args.engine_cpus.partition("-")
        rest = os.sched_getaffinity(0) - set(range(int(lo), int(hi or lo) + 1))
        if not rest:
            raise SystemExit(f"--engine-cpus {args.engine_cpus} leaves no CPU for the gateway")
        os.sched_setaffinity(0, rest)
    with tempfile.TemporaryDirectory() as tmp:
        platform = PlatformSettings(data_dir=Path(tmp), api_key=BENCH_KEY)
        settings = StackSettings(http_port=free_port(), grpc_port=free_port(), engine_port=free_port(),
                                 broker_port=free_port(), metrics_port=free_port())
        with Stack(platform, settings, env) as stack:
            direct = f"http://127.0.0.1:{settings.engine_port}/v1/chat/completions"
            gateway = f"http://127.0.0.1:{settings.http_port}/v1/chat/completions"
            auth = {"Authorization": f"Bearer {BENCH_KEY}"}
            assert stack.prepared is not None
            engine_auth = {"Authorization": f"Bearer {stack.prepared.engine_api_key}"}
            drive(direct, engine_auth, 8, 4, args.max_tokens)  # warm-up both paths
            drive(gateway, auth, 8, 4, args.max_tokens)
            services = services_process(stack)
            if args.engine_cpus:
                pin(services, os.sched_getaffinity(0))
                print(f"engine on CPUs {args.engine_cpus}; services and client on CPUs "
                      f"{','.join(map(str, sorted(os.sched_getaffinity(0))))}")
            if args.store:
                modes = {"both": (False, True), "unary": (False,), "streamed": (True,)}[args.store_mode]
                compare_store(services, gateway, auth, args.store_pairs, args.store_block, args.max_tokens, modes)
                return
            cpu_before, t0 = cpu_seconds(services), time.perf_counter()
            time.sleep(10)  # what the services process burns with no traffic (consumers, health checks)
            idle = (cpu_seconds(services) - cpu_before) / (time.perf_counter() - t0)
            print(f"services process at rest: {idle * 1e3:.1f} ms CPU per second (subtracted below)")
            print(f"{args.requests} requests per run, {args.max_tokens} tokens each, base model {BASE_MODEL_ID}")
            print("added: gateway minus direct, end to end; own: the gateway's time apart from waiting for the "
                  "engine, as its server-timing header reports it (from the request's arrival to the answer ready)")
            print(f"{'conc':>4} {'path':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7}   added p50 / p99, own p50 / p99, "
                  "throughput, gateway CPU per request")
            for c in args.concurrency:
                d_lat, d_wall, _ = drive(direct, engine_auth, args.requests, c, args.max_tokens)
                cpu_before = cpu_seconds(services)
                g_lat, g_wall, own = drive(gateway, auth, args.requests, c, args.max_tokens)
                cpu_ms = (cpu_seconds(services) - cpu_before - idle * g_wall) * 1e3 / len(g_lat)
                for name, lat, wall in (("direct", d_lat, d_wall), ("gateway", g_lat, g_wall)):
                    print(f"{c:>4} {name:>8} {pct(lat, 50) * 1e3:8.1f} {pct(lat, 99) * 1e3:8.1f} "
                          f"{len(lat) / wall:7.2f}", end="")
                    if name == "gateway":
                        print(f"   {(pct(g_lat, 50) - pct(d_lat, 50)) * 1e3:+.1f} / "
                              f"{(pct(g_lat, 99) - pct(d_lat, 99)) * 1e3:+.1f} ms, "
                              f"{pct(own, 50) * 1e3:.2f} / {pct(own, 99) * 1e3:.2f} ms, "
                              f"{d_wall / g_wall:.2f}x of direct, {cpu_ms:.2f} ms CPU", end="")
                    print()
            if args.adapters:
                root = gateway.removesuffix("/v1/chat/completions")
                names = make_adapters(stack.prepared.model_dir, Path(tmp) / "bench-adapters", args.adapters,
                                      f"{settings.host}:{settings.broker_port}", root, auth)
                c = args.adapter_concurrency
                drive(gateway, auth, 2 * len(names), c, args.max_tokens, tuple(names))  # first loads
                print(f"\nthrough the gateway, {args.requests} requests at concurrency {c}:")
                print(f"{'adapters':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7}")
                for label, models in (("1", (names[0],)), (str(len(names)), tuple(names))):
                    lat, wall, _ = drive(gateway, auth, args.requests, c, args.max_tokens, models)
                    print(f"{label:>8} {pct(lat, 50) * 1e3:8.1f} {pct(lat, 99) * 1e3:8.1f} {len(lat) / wall:7.2f}")
            if args.by_thread:
                cpu_by_thread(services, gateway, auth, max(args.requests, 100), args.max_tokens)


if __name__ == "__main__":
    main()
