"""Static checks of the repository's promises: CI runs the README's commands, function files are valid
and named as CVAT names them (deployment artefacts: test_deploy.py)."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from serverless.common import model_files
from serverless.runtime import config as function_config
from serverless.runtime.platform import discover

from helpers import REPO

FUNCTION_FILES = discover(REPO / "serverless", gpu=False) + [
    p for p in discover(REPO / "serverless", gpu=True) if p.name == "function-gpu.yaml"]


def readme_command(heading: str) -> str:
    """The one command in the first code block after the README heading that starts with ``heading``."""
    readme = (REPO / "README.md").read_text()
    section = readme.split(f"\n## {heading}", 1)[1]
    block = re.search(r"```(?:\w+)?\n(.*?)```", section, re.S).group(1).strip()
    assert "\n" not in block, f"the {heading!r} block must hold exactly one command"
    return block


def test_ci_runs_exactly_the_readme_commands():
    lines = [line.strip() for line in (REPO / ".ci/run").read_text().splitlines()]
    assert readme_command("Set up") in lines
    assert readme_command("Run the tests") in lines


def test_every_function_yaml_is_valid():
    assert FUNCTION_FILES, "no function.yaml under serverless/"
    for path in FUNCTION_FILES:
        function_config.load(path)


@pytest.mark.parametrize("path", FUNCTION_FILES, ids=lambda p: str(p.parent.relative_to(REPO)))
def test_images_are_named_as_cvat_names_them(path):
    framework, *rest = path.parent.parent.relative_to(REPO / "serverless").parts
    # CVAT's rule: cvat.<path with dots>, "pytorch" shortened to "pth"; image names are lower case.
    dotted = "cvat." + ".".join(["pth" if framework == "pytorch" else framework, *rest]).lower()
    build = yaml.safe_load(path.read_text())["spec"]["build"]
    # GPU builds tag the same image name :latest-gpu, as CVAT's do.
    assert build["image"] == (f"{dotted}:latest-gpu" if path.name == "function-gpu.yaml" else dotted)
    if (path.parent / "Dockerfile").exists():
        base = f"{dotted}.base"
        assert build["baseImage"] == (f"{base}:latest-gpu" if path.name == "function-gpu.yaml" else base)
        assert f"-t {dotted}.base" in (path.parent / "Dockerfile").read_text()


def test_catalogue_functions_exist():
    function_ids = {function_config.load(path).name for path in FUNCTION_FILES}
    for model in model_files.catalogue().values():
        assert set(model.functions) <= function_ids, model.name


# Citations: code cites the repository's own documents, by section

CITATION = re.compile(r"(?:docs/(?P<file>[\w-]+\.md) )?§(?P<section>D\d+|\d+(?:\.\d+)*)")
BINARY = (".png", ".jpg", ".jpeg", ".gif", ".ico", ".pdf")


def code_files() -> list:
    """Every file of the repository (tracked, or new and not ignored) but the documents it cites."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    return [REPO / name for name in listed if not name.startswith("docs/") and not name.endswith(BINARY)
            and (REPO / name).is_file()]


def headings(document: str) -> set[str]:
    """The section numbers of a document's headings (``### 3.8 Errors ...`` -> ``3.8``)."""
    text = (REPO / "docs" / document).read_text()
    return set(re.findall(r"^#+ (D\d+|\d+(?:\.\d+)*) ", text, re.M))


def test_every_citation_resolves_to_a_heading_in_the_repository():
    sections = {document: headings(document) for document in ("wire-format.md", "architecture.md")}
    cited = 0
    for path in code_files():
        for match in CITATION.finditer(path.read_text(errors="replace")):
            document = match["file"] or "wire-format.md"
            assert document in sections, f"{path.relative_to(REPO)} cites docs/{document}, which does not exist"
            assert match["section"] in sections[document], \
                f"{path.relative_to(REPO)} cites docs/{document} §{match['section']}, which has no such heading"
            cited += 1
    assert cited > 100


def test_no_code_cites_a_document_outside_the_repository():
    for path in code_files():
        if path == Path(__file__):
            continue  # the names below
        text = path.read_text(errors="replace")
        for outside in ("cvat-compat", "shared/docs", "architecture.md's"):
            assert outside not in text, f"{path.relative_to(REPO)} cites {outside!r}, which is not in the repository"


def test_shared_modules_hold_one_concern_each():
    """No module of the dispatcher or the shared toolkit grows past ~500 lines: one that does is
    holding several reasons to change and is split, as the store and the sdk were."""
    for path in [*(REPO / "dispatcher").rglob("*.py"), *(REPO / "serverless/common").rglob("*.py")]:
        lines = len(path.read_text().splitlines())
        assert lines <= 500, f"{path.relative_to(REPO)} has {lines} lines"


def test_the_readmes_layout_names_every_module_and_script():
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[:layout.index("```", layout.index("```") + 3)]
    by_name = [*(REPO / "dispatcher").glob("*.py"), *(REPO / "serverless/common").glob("*.py"),
               *(REPO / "serverless/runtime").glob("*.py"), *(REPO / "scripts").iterdir(), *(REPO / "deploy").iterdir()]
    by_stem = [*(REPO / "dispatcher/store").glob("*.py"), *(REPO / "dispatcher/cvat").glob("*.py"),
               *(REPO / "serverless/common/sdk").glob("*.py")]
    unnamed = [path.relative_to(REPO).as_posix() for path in by_name if path.name not in layout
               and path.name not in ("__init__.py", "__main__.py", "README.md")]
    unnamed += [path.relative_to(REPO).as_posix() for path in by_stem if path.stem not in layout
                and path.name != "__init__.py"]
    unnamed += [path.relative_to(REPO).as_posix() for path in (REPO / "dispatcher").iterdir()
                if path.is_dir() and path.name != "__pycache__" and f"{path.name}/" not in layout]
    assert not unnamed, f"README's Layout does not name {unnamed}"
