"""Command line of the local nuclio runtime; see ``serverless/runtime/__init__.py``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from serverless.runtime import config as function_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serverless.runtime",
                                     description="Run nuclio function folders locally, without Docker.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run one function as a nuclio processor would")
    serve.add_argument("function", type=Path, help="a function folder (its function.yaml) or a function*.yaml file")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, help="default: the trigger's attributes.port, else 8080")
    serve.add_argument("--parent-pid", type=int, help="end when this process ends (the platform passes its own)")
    platform = commands.add_parser("platform", help="run every function under a tree behind the nuclio dashboard API")
    platform.add_argument("tree", type=Path)
    platform.add_argument("--host", default="127.0.0.1")
    platform.add_argument("--port", type=int, default=8070)
    platform.add_argument("--gpu", action="store_true", help="use function-gpu.yaml where a folder has one")
    platform.add_argument("--function", action="append", dest="functions", metavar="NAME",
                          help="serve only this function (repeatable); default: every function under the tree")
    platform.add_argument("--remote", action="append", default=[], metavar="NAME=URL", type=_remote,
                          help="this function is served at URL (its own `serve`, e.g. a container): list it, follow "
                               "its readiness and forward calls there (repeatable); "
                               "then only named functions are listed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    if args.command == "serve":
        try:
            config = function_config.load(args.function)
        except function_config.ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        from serverless.runtime import processor

        if args.parent_pid:
            from serverless.runtime.lifetime import die_with_parent

            die_with_parent(args.parent_pid)
        processor.serve(config, args.host, args.port or config.trigger.port or 8080)
    else:
        if not args.tree.is_dir():
            print(f"error: {args.tree} is not a directory", file=sys.stderr)
            return 2
        from serverless.runtime import platform as local_platform

        try:
            local_platform.serve(args.tree, args.host, args.port, args.gpu,
                                 set(args.functions) if args.functions else None, dict(args.remote))
        except local_platform.UnknownFunctions as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    return 0


def _remote(text: str) -> tuple[str, str]:
    name, equals, url = text.partition("=")
    if not equals or not name or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected NAME=http://host:port, got {text!r}")
    return name, url


if __name__ == "__main__":
    sys.exit(main())
