"""``coachforge``: run the all-in-one stack, run the demo, prepare the base model."""

from __future__ import annotations

import argparse
import os
import sys

from coachforge_launcher.settings import StackSettings
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

    serve(args.service, args.host, args.http_port, args.grpc_port)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from coachforge_launcher.serve import migrate

    migrate()
    return 0


def cmd_coach_eval(args: argparse.Namespace) -> int:
    from coachforge_coach.evaluation import format_report, run

    platform, stack = PlatformSettings(), StackSettings()
    key_file = platform.data_dir / "api-key"
    api_key = args.api_key or platform.api_key or (key_file.read_text().strip() if key_file.exists() else "")
    if not api_key:
        print("No API key: pass --api-key or set COACHFORGE_API_KEY.", file=sys.stderr)
        return 2
    base_url = args.base_url or f"http://{stack.host}:{stack.http_port}"
    print(format_report(run(base_url, api_key, args.model, variants=args.variants)))
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
                      help="synthetic training examples (default 80; ~30 s per optimizer step of 8 on 2 cores)")
    demo.add_argument("--eval-examples", type=int, default=24, help="held-out prompts to compare on (default 24)")
    demo.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the synthetic data (default 7)")
    demo.set_defaults(func=cmd_demo)
    serve = sub.add_parser("serve", help="run one service (REST, gRPC, its event consumers) in this process, "
                                         "as on Kubernetes")
    serve.add_argument("service", choices=("dataset", "trainer", "registry", "inference", "coach"))
    serve.add_argument("--host", default="0.0.0.0", help="interface to bind (default 0.0.0.0)")
    serve.add_argument("--http-port", type=int, default=8000, help="REST port (default 8000)")
    serve.add_argument("--grpc-port", type=int, default=50051, help="gRPC port (default 50051)")
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("migrate", help="upgrade the database to the latest schema; create the default tenant and "
                                   "register COACHFORGE_API_KEY if set").set_defaults(func=cmd_migrate)
    coach = sub.add_parser("coach", help="Polarize coach tools").add_subparsers(dest="coach_command", required=True)
    coach_eval = coach.add_parser("eval", help="ask a running stack's coach for the evaluation scenarios (fresh, "
                                                "overreached, sick, poor sleep, key session week, taper) with a "
                                                "model and print the share of valid answers, rule-accepted "
                                                "operations and agreement with the expected direction")
    coach_eval.add_argument("--model", required=True, help="model id or avatar to evaluate")
    coach_eval.add_argument("--variants", type=int, default=2, help="variants per scenario (default 2)")
    coach_eval.add_argument("--base-url", default=None, help="the stack's URL (default: this machine's stack)")
    coach_eval.add_argument("--api-key", default=None, help="API key (default: COACHFORGE_API_KEY or the stored key)")
    coach_eval.set_defaults(func=cmd_coach_eval)
    sub.add_parser("prepare-model", help="convert the bundled base model once and print its folder").set_defaults(
        func=cmd_prepare_model)
    args = parser.parse_args(argv)
    platform = PlatformSettings()
    configure_logging("WARNING" if args.command == "demo" else platform.log_level, json=platform.log_json)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
