"""``python -m serverless.common.sdk --function-module M --id ID ... > function.yaml``: the file that
serves a cvat-sdk function, with the command that wrote it in its header."""

from __future__ import annotations

import argparse
import shlex
import sys
from importlib.metadata import version as package_version
from pathlib import Path

import yaml
from cvat_sdk.auto_annotation import BadFunctionError

from serverless.common.sdk.loading import load_function, parse_parameter
from serverless.common.sdk.spec import function_yaml


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the label spec) as ``|`` blocks, readable in the file."""


_BlockDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serverless.common.sdk",
                                     description="Write the function.yaml that serves a cvat-sdk function")
    parser.add_argument("--function-module", metavar="MODULE")
    parser.add_argument("--function-file", metavar="PATH", help="relative to the function folder when served")
    parser.add_argument("-p", "--function-parameter", metavar="NAME=TYPE:VALUE", action="append", default=[])
    parser.add_argument("--id", required=True, help="the function id (metadata.name)")
    parser.add_argument("--name", help="the display name (default: the id)")
    parser.add_argument("--description", default="", help="spec.description")
    parser.add_argument("--base-image", default=f"cvat.autoannotate.openvino:{package_version('cvat-autoannotate')}",
                        help="nuclio's spec.build.baseImage: one of our framework bases, e.g. "
                             "cvat.autoannotate.pytorch:<version> for a function that needs torch "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    if (args.function_module is None) == (args.function_file is None):
        parser.error("give exactly one of --function-module and --function-file")
    try:
        parameters = dict(parse_parameter(text) for text in args.function_parameter)
        function = load_function(args.function_module, Path(args.function_file) if args.function_file else None,
                                 parameters)
        source = args.function_module or args.function_file
        document = function_yaml(function, function_id=args.id, name=args.name or args.id,
                                 description=args.description or f"cvat-sdk function {source}",
                                 module=args.function_module, file=args.function_file, parameters=parameters,
                                 base_image=args.base_image)
    except (ValueError, TypeError, BadFunctionError, ImportError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    command = shlex.join(["python", "-m", "serverless.common.sdk", *(sys.argv[1:] if argv is None else argv)])
    print(f"# Serves a cvat-sdk function. Written by (in this folder):\n#   {command}\n"
          + yaml.dump(document, Dumper=_BlockDumper, sort_keys=False, width=120), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
