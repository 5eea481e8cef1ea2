"""``python -m dispatcher serve | worker | annotate-folder | export | auto-annotate``."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path

from dispatcher import settings as dispatcher_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dispatcher",
                                     description="CVAT-compatible auto-annotation dispatcher")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-auth-on-network", action="store_true",
                       help="serve an address other than loopback without API_TOKEN: anyone who can reach it "
                            "can run functions and read, change and delete every task")
    worker = commands.add_parser("worker", help="run an RQ worker for annotation chunks "
                                  "(queue 'annotation-<DEPLOYMENT_NAMESPACE>')")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--name", help="the worker's name in RQ (default: RQ's)")
    folder = commands.add_parser("annotate-folder", help="annotate a folder of images end to end")
    folder.add_argument("folder", type=Path)
    folder.add_argument("--function", required=True, help="the function id, e.g. openvino-omz-public-yolo-v3-tf")
    folder.add_argument("--threshold", type=float, help="the function's confidence threshold (default: its own)")
    folder.add_argument("--format", choices=("coco", "cvat"), default="coco",
                        help="COCO JSON or CVAT for images 1.1 XML (default: coco)")
    folder.add_argument("-o", "--output", type=Path, required=True, help="the file to write")
    folder.add_argument("--api", help="use this running dispatcher (and its workers) instead of starting one")
    export = commands.add_parser("export", help="write a task's annotations from the task store, no server needed")
    export.add_argument("task", type=int, help="the task's id")
    export.add_argument("--format", choices=("coco", "cvat"), default="coco",
                        help="COCO JSON or CVAT for images 1.1 XML (default: coco)")
    export.add_argument("--category-ids", choices=("task", "coco"), default="task",
                        help="COCO only: number categories in label order, or with COCO's own ids (default: task)")
    export.add_argument("-o", "--output", type=Path, required=True, help="the file to write")
    from dispatcher import auto_annotation

    sdk = commands.add_parser("auto-annotate", help="run a cvat-sdk detection function here over a task "
                              "(cvat-cli's task auto-annotate flags)")
    auto_annotation.add_arguments(sdk)
    args = parser.parse_args(argv)

    try:
        settings = dispatcher_settings.current()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "serve":
        import uvicorn

        from dispatcher.api import create_app

        if not (settings.api_token or settings.cvat_url or args.no_auth_on_network or _is_loopback(args.host)):
            print(f"error: refusing to serve {args.host} without API_TOKEN: anyone who can reach it could run "
                  "functions and read, change and delete every task. Set API_TOKEN, serve 127.0.0.1, or pass "
                  "--no-auth-on-network to accept that risk", file=sys.stderr)
            return 2
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
        return 0
    if args.command == "auto-annotate":
        return auto_annotation.run(args, settings.api_token)
    if args.command == "worker":
        from dispatcher import worker as chunk_worker

        chunk_worker.run(settings, args.burst, args.name)
        return 0
    if args.command == "export":
        return _export(settings, args)
    from dispatcher import folder as annotate

    try:
        return annotate.annotate_folder(settings, args.folder, args.function, args.output, args.threshold,
                                        args.format, args.api.rstrip("/") if args.api else None)
    except annotate.FolderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _export(settings: dispatcher_settings.Settings, args: argparse.Namespace) -> int:
    """What ``GET /api/tasks/<id>/export`` answers, read from the task store (DATA_DIR, DATABASE_URL)."""
    import json

    from dispatcher.backends import open_store
    from dispatcher.store import InvalidInput, NotFound

    if settings.cvat_url is not None:
        print("error: with CVAT_URL the tasks are CVAT's: export them from CVAT", file=sys.stderr)
        return 2
    store = open_store(settings, worker=False)
    try:
        if args.format == "coco":
            content = json.dumps(store.export_coco(args.task, args.category_ids == "coco"))
        else:
            content = store.export_cvat_xml(args.task)
    except (NotFound, InvalidInput) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()
    args.output.write_text(content)
    print(f"wrote {args.output}: task {args.task}, {args.format}")
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


if __name__ == "__main__":
    sys.exit(main())
