import shutil

import pytest

from serverless.common import model_files, settings

from helpers import SHARED

FACE = "face-detection-0205"


def settings_with(tmp_path, **environ):
    return settings.load({"MODELS_DIR": str(tmp_path / "models"), **environ})


def copy_variant(root, precision="FP16"):
    source = SHARED / "models" / FACE / precision
    destination = root / precision
    shutil.copytree(source, destination)
    return destination


def test_catalogue_is_consistent():
    catalogue = model_files.catalogue()
    assert {FACE, "age-gender-recognition-retail-0013", "emotions-recognition-retail-0003"} <= set(catalogue)
    for model in catalogue.values():
        assert model.variants and model.functions and model.env.endswith("MODEL_PATH")
        # An official model can be fetched or built; a stand-in names what it stands in for.
        assert (model.downloadable or any(v.generated for v in model.variants)
                or model.substitute_for in catalogue), model.name
        for variant in model.variants:
            for item in variant.files:
                if item.algorithm:
                    assert len(item.checksum) == {"sha256": 64, "sha384": 96}[item.algorithm]
                else:  # no checksum only where nobody publishes one: an official URL, or a build product
                    assert item.url or variant.generated, f"{model.name}/{item.name}"


def test_missing_files_name_the_file_and_the_fetch_command(tmp_path):
    with pytest.raises(model_files.ModelFilesMissing) as error:
        model_files.resolve(FACE, settings_with(tmp_path))
    message = str(error.value)
    assert f"{tmp_path}/models/{FACE}/FP32/{FACE}.xml is missing" in message
    assert f"python -m serverless.common.model_files download {FACE}" in message


def test_resolution_order_env_then_models_dir_then_container(tmp_path):
    in_models_dir = copy_variant(tmp_path / "models" / FACE)
    resolved = model_files.resolve(FACE, settings_with(tmp_path))
    assert (resolved.precision, resolved.file(".xml")) == ("FP16", in_models_dir / f"{FACE}.xml")

    override = copy_variant(tmp_path / "override")  # CVAT style: the directory holding the files
    resolved = model_files.resolve(FACE, settings_with(tmp_path, DETECTOR_MODEL_PATH=str(override)))
    assert resolved.file(".bin") == override / f"{FACE}.bin"


def test_mirror_verifies_checksums_and_is_idempotent(tmp_path, capsys):
    destination = tmp_path / "models"
    problems, absent = model_files.mirror(SHARED / "models", [FACE], destination)
    assert (problems, absent) == ([], [])
    copied = destination / FACE / "FP16" / f"{FACE}.bin"
    assert copied.read_bytes() == (SHARED / "models" / FACE / "FP16" / f"{FACE}.bin").read_bytes()
    capsys.readouterr()
    assert model_files.mirror(SHARED / "models", [FACE], destination) == ([], [])
    assert "mirrored" not in capsys.readouterr().out


def test_mirror_refuses_a_corrupt_source(tmp_path):
    source = tmp_path / "source"
    corrupt = copy_variant(source / FACE) / f"{FACE}.bin"
    data = bytearray(corrupt.read_bytes())
    data[1000] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    problems, _ = model_files.mirror(source, [FACE], tmp_path / "models")
    assert len(problems) == 1 and "sha256 does not match the catalogue" in problems[0]
    assert not (tmp_path / "models" / FACE / "FP16" / f"{FACE}.bin").exists()
    assert not list((tmp_path / "models" / FACE / "FP16").glob(".*"))  # no temporary left behind


def test_a_web_page_is_refused_where_no_checksum_would_catch_it(tmp_path):
    # IOG's official file lives on Google Drive, which answers large downloads with an HTML page.
    source = tmp_path / "source" / "iog"
    source.mkdir(parents=True)
    (source / "IOG_PASCAL_SBD.pth").write_text("\n  <!DOCTYPE html><html>"
                                               "<title>Google Drive - Virus scan warning</title>")
    problems, _ = model_files.mirror(tmp_path / "source", ["iog"], tmp_path / "models")
    assert problems == [
        f"{source / 'IOG_PASCAL_SBD.pth'}: IOG_PASCAL_SBD.pth: got a web page (HTML), not the model file"]
    assert not list((tmp_path / "models" / "iog").iterdir())  # nothing installed, no temporary left
    # An OpenVINO IR's .xml is XML, not a web page: it passes.
    (tmp_path / "source" / "dextr").mkdir()
    for name in ("dextr.xml", "dextr.bin"):
        (tmp_path / "source" / "dextr" / name).write_text('<?xml version="1.0"?>\n<net name="dextr"/>')
    assert model_files.mirror(tmp_path / "source", ["dextr"], tmp_path / "models")[0] == []


def test_status_cli_reports_missing_models(tmp_path, capsys):
    assert model_files.main(["--models-dir", str(tmp_path), "status", FACE]) == 0
    out = capsys.readouterr().out
    assert f"MISSING  {FACE}" in out
    assert f"python -m serverless.common.model_files download {FACE}" in out


def test_download_from_a_wheel_on_the_package_index(tmp_path):
    # PP-OCRv4's detector ships inside the rapidocr-onnxruntime wheel: pip fetches it, the member is
    # extracted and checked against the catalogue's sha256.
    name = "text-detection-ppocrv4-dbnet"
    assert model_files.download([name], tmp_path) == []
    saved = tmp_path / name / "ch_PP-OCRv4_det_infer.onnx"
    assert saved.read_bytes() == (SHARED / "models" / name / saved.name).read_bytes()


def test_resolve_first_prefers_the_official_model(tmp_path):
    tiny = SHARED / "models" / "yolo-v3-tiny" / "FP16"
    shutil.copytree(tiny, tmp_path / "models" / "yolo-v3-tiny" / "FP16")
    resolved = model_files.resolve_first(["yolo-v3-tf", "yolo-v3-tiny"], settings_with(tmp_path))
    assert resolved.name == "yolo-v3-tiny"
    shutil.rmtree(tmp_path / "models" / "yolo-v3-tiny")
    with pytest.raises(model_files.ModelFilesMissing, match="yolo-v3-tf/FP32/yolo-v3-tf.xml is missing"):
        model_files.resolve_first(["yolo-v3-tf", "yolo-v3-tiny"], settings_with(tmp_path))


def test_mirroring_named_models_fails_when_the_source_lacks_them(tmp_path, capsys):
    # What an air-gapped image build runs: a named model missing from the folder fails the build.
    source = tmp_path / "source"
    copy_variant(source / FACE)
    destination = str(tmp_path / "models")
    assert model_files.main(["--models-dir", destination, "mirror", "--from", str(source), FACE]) == 0
    assert model_files.main(["--models-dir", destination, "mirror", "--from", str(source), FACE, "yolox-nano"]) == 1
    assert f"{source} holds no complete copy of yolox-nano" in capsys.readouterr().err
    # --any: interchangeable models (an official one and its stand-in), one in place is enough.
    assert model_files.main(["--models-dir", destination, "mirror", "--from", str(source), "--any",
                             "yolox-nano", FACE]) == 0
    assert model_files.main(["--models-dir", str(tmp_path / "empty"), "mirror", "--from", str(source), "--any",
                             "yolox-nano", "yolo-v3-tiny"]) == 1
