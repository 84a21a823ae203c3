"""The served model trusts no input: base64 only, limits checked from headers, bounded requests."""
from __future__ import annotations

import base64
import io
import shutil
import socket
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.exceptions import MlflowException
from PIL import Image

from biomedclip_factory.errors import DataError, ParamsError, SourceError, TrackingServerError
from biomedclip_factory.evaluate.models import load_encoder
from biomedclip_factory.params import Section
from biomedclip_factory.registry.lineage import SERVING_DISTRIBUTIONS, serving_requirements
from biomedclip_factory.registry.pyfunc import ServeLimits
from biomedclip_factory.registry.register import register_model

from .conftest import REPO, tiny_model_dir

LIMITS = ServeLimits(max_rows=40, max_request_bytes=2_000_000, max_image_bytes=500_000, max_image_pixels=4_000_000,
                     max_request_pixels=6_000_000, batch_size=8, max_text_chars=50_000)


def _b64(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> mlflow.pyfunc.PyFuncModel:
    """A tiny model registered in a real SQLite MLflow and loaded back as a client would."""
    root = tmp_path_factory.mktemp("serving")
    model_dir = tiny_model_dir(root)
    example = root / "example.png"
    Image.new("RGB", (64, 64), (90, 40, 20)).save(example)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    experiment = mlflow.create_experiment("serving", artifact_location=(root / "artifacts").as_uri())
    try:
        with mlflow.start_run(experiment_id=experiment):
            registered = register_model(model_dir, "served", "challenger", example, {},
                                        serving_requirements(REPO / "constraints.txt"),
                                        REPO / "src" / "biomedclip_factory", LIMITS)
        yield mlflow.pyfunc.load_model(registered.model_uri)
    finally:
        mlflow.set_tracking_uri(None)


def _refused(model, frame: pd.DataFrame, params: dict | None = None) -> str:
    with pytest.raises(MlflowException) as err:
        model.predict(frame, params=params)
    assert err.value.get_http_status_code() == 400
    return err.value.message


def test_a_file_path_is_refused_alike_whether_it_exists_or_not(served, tmp_path):
    real = tmp_path / "secret.png"
    Image.new("RGB", (32, 32)).save(real)
    messages = {_refused(served, pd.DataFrame({"image": [path]})) for path in
                (str(real), str(tmp_path / "missing.png"), str(tmp_path), "/etc/hostname")}
    assert messages == {"row 0: 'image' is not valid base64 (file paths are not accepted)"}


def test_a_pixel_bomb_is_refused_from_its_header_before_decoding(served):
    bomb = _b64(Image.new("1", (13_000, 13_000)))  # ~20 KB of PNG, 169 megapixels
    assert len(bomb) < 100_000
    message = _refused(served, pd.DataFrame({"image": [_b64(Image.new("RGB", (40, 40))), bomb]}))
    assert message == "row 1: image of 13000x13000 pixels exceeds the limit of 4000000 pixels"  # said before decoding
    icon = _b64(Image.new("RGB", (64, 64)), "ICO")  # ICO decodes while opening: not a format figures come in
    assert _refused(served, pd.DataFrame({"image": [icon]})) == "row 0: 'image' is not a decodable image"
    # each image is decoded whole: the request's pixels are bounded too, from the headers
    plain = _b64(Image.new("RGB", (1500, 1500), (30, 60, 90)))
    assert _refused(served, pd.DataFrame({"image": [plain] * 3})) == \
        "the request's images hold 6750000 pixels; the limit is 6000000 (send fewer or smaller images per request)"
    cut = base64.b64decode(_b64(Image.effect_mandelbrot((300, 200), (-2, -1.2, 1, 1.2), 60).convert("RGB"), "JPEG"))
    assert _refused(served, pd.DataFrame({"image": [_b64(Image.new("RGB", (40, 40))),
                                                    base64.b64encode(cut[:len(cut) // 2]).decode()]})) == \
        "row 1: 'image' is not a decodable image"  # a truncated file: the client's error, not a 500


def test_garbage_rows_and_oversized_requests_are_refused_by_name(served):
    assert _refused(served, pd.DataFrame({"image": [base64.b64encode(b"not an image").decode()]})) == \
        "row 0: 'image' is not a decodable image"
    assert "Incompatible input types for column image" in _refused(served, pd.DataFrame({"image": [None, 5]}))
    too_many = pd.DataFrame({"text": ["a chest x-ray"] * 41})
    assert _refused(served, too_many) == "41 rows or candidate labels in one request; the limit is 40"
    assert _refused(served, pd.DataFrame({"image": [_b64(Image.new("RGB", (40, 40)))]}),
                    {"candidate_labels": [f"label {i}" for i in range(41)]}).startswith("41 rows or candidate labels")
    big = pd.DataFrame({"image": [base64.b64encode(bytes(600_000)).decode()]})
    assert _refused(served, big) == "row 0: image is larger than 500000 bytes"
    heavy = pd.DataFrame({"text": ["x" * 700_000] * 3})
    assert "the limit is 2000000" in _refused(served, heavy)
    # One long text costs its whole length to clean and tokenise, though the model reads its first tokens only
    long = "a chest x-ray " * 3_600
    assert _refused(served, pd.DataFrame({"text": ["a scan", long]})).startswith(
        f"row 1: a text of {len(long)} characters; the limit is 50000")
    assert _refused(served, pd.DataFrame({"image": [_b64(Image.new("RGB", (40, 40)))]}),
                    {"candidate_labels": ["ct", long]}).startswith("candidate label 1: a text of")
    assert _refused(served, pd.DataFrame({"text": ["a"]}), {"candidate_labels": ["a", "b"]}) == \
        "zero-shot classification needs at least one row with an image"


def test_images_embedded_in_batches_equal_one_at_a_time(served):
    rng = np.random.default_rng(0)
    images = [_b64(Image.fromarray(rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)), "JPEG") for _ in range(19)]
    together = served.predict(pd.DataFrame({"image": images, "text": ["a scan"] * 19}))
    alone = [served.predict(pd.DataFrame({"image": [image]}))["image_embedding"][0] for image in images[:3]]
    torch.testing.assert_close(torch.tensor(list(together["image_embedding"][:3])), torch.tensor(alone))
    assert together["similarity"].notna().all()
    # Large images, as open_clip's preprocess embeds the file decoded whole (a JPEG shrunk while decoding
    # would move the embedding by ~1e-2)
    ramp = np.linspace(0, 255, 900 * 700 * 3).reshape(900, 700, 3).astype(np.uint8)
    detail = np.asarray(Image.effect_mandelbrot((700, 900), (-2, -1.2, 1, 1.2), 60).convert("RGB"))
    encoder = served.unwrap_python_model().encoder
    for pixels, fmt in ((ramp, "PNG"), (detail, "JPEG")):
        sent = _b64(Image.fromarray(pixels), fmt)
        as_open_clip = encoder.embed_images([Image.open(io.BytesIO(base64.b64decode(sent))).convert("RGB")])[0]
        torch.testing.assert_close(torch.tensor(served.predict(pd.DataFrame({"image": [sent]}))["image_embedding"][0]),
                                   as_open_clip, rtol=0, atol=1e-6, msg=fmt)
    labelled = served.predict(pd.DataFrame({"image": images[:2]}), params={"candidate_labels": ["ct", "mri"]})
    assert list(labelled["label"]) == [["ct", "mri"][int(np.argmax(p))] for p in labelled["probabilities"]]


def test_limits_come_from_params(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert ServeLimits.from_params(Section(params["register"], "register")) == ServeLimits()  # the defaults, spelt out
    params["register"]["serve"]["max_rows"] = 8
    assert ServeLimits.from_params(Section(params["register"], "register")).max_rows == 8
    params["register"]["serve"]["max_rows"] = 0
    with pytest.raises(ParamsError, match="'register.serve.max_rows' must be > 0"):
        ServeLimits.from_params(Section(params["register"], "register"))


def test_requests_that_ask_nothing_are_refused_and_wrapped_base64_is_read(served):
    assert "no row holds an 'image' (base64) or a non-empty 'text'" in \
        _refused(served, pd.DataFrame({"img": [_b64(Image.new("RGB", (40, 40)))]}))  # a misspelled column
    assert "no row holds" in _refused(served, pd.DataFrame({"text": ["", "  "]}))
    # An empty caption among good ones, or a row of neither: refused by row, not answered with None
    assert _refused(served, pd.DataFrame({"text": ["a chest x-ray", " ", "a scan", ""]})) == \
        "rows 1, 3: neither an 'image' nor a non-empty 'text'"
    assert _refused(served, pd.DataFrame({"image": [_b64(Image.new("RGB", (40, 40))), None], "text": [None, ""]})) \
        == "row 1: neither an 'image' nor a non-empty 'text'"
    image = _b64(Image.new("RGB", (40, 40), (200, 10, 10)))
    assert "at least two candidate labels" in _refused(served, pd.DataFrame({"image": [image]}),
                                                       {"candidate_labels": ["a chest x-ray"]})
    wrapped = "\n".join(image[i:i + 76] for i in range(0, len(image), 76)) + "\n"  # `base64` as GNU writes it
    assert served.predict(pd.DataFrame({"image": [wrapped]}))["image_embedding"][0] == \
        served.predict(pd.DataFrame({"image": [image]}))["image_embedding"][0]


def test_the_served_environment_is_what_serving_imports_pinned(served):
    """`mlflow models serve` without --env-manager local installs the logged requirements: every
    third-party distribution the serving code imports, at the project's resolved versions, and not
    the training stack."""
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    from .test_dvc_deps import REPO as ROOT, _imports, project_files

    requirements = Path(mlflow.artifacts.download_artifacts("models:/served@challenger/requirements.txt"))
    pinned = {canonicalize_name(line.split("==")[0]): line for line in requirements.read_text().split()}
    assert not {"deepspeed", "prefect", "dvc", "scikit-learn"} & set(pinned)
    constraints = {canonicalize_name(l.split("==")[0]): l for l in (REPO / "constraints.txt").read_text().split()}
    assert all(pinned[name] == constraints[name] for name in pinned if name in constraints)
    imported = set()
    for path in project_files("biomedclip_factory.registry.pyfunc"):
        module = ".".join(path.relative_to(ROOT / "src").with_suffix("").parts)
        imported |= {name.split(".")[0] for name in _imports(path, module)}
    owners = packages_distributions()
    distributions = {canonicalize_name(d) for top in imported for d in owners.get(top, [])
                     if canonicalize_name(d) not in ("biomedclip-factory", "mlflow-skinny", "mlflow-tracing")}
    assert distributions and distributions <= {canonicalize_name(d) for d in SERVING_DISTRIBUTIONS} <= set(pinned)


def test_a_transparent_figure_is_served_on_white_as_align_trains_on_it(served):
    text = np.zeros((48, 48, 4), np.uint8)
    text[16:32, 8:40, 3] = 255
    on_white = Image.alpha_composite(Image.new("RGBA", (48, 48), "white"), Image.fromarray(text, "RGBA"))
    transparent, flat = (served.predict(pd.DataFrame({"image": [_b64(img)]}))["image_embedding"][0]
                         for img in (Image.fromarray(text, "RGBA"), on_white.convert("RGB")))
    assert transparent == flat


def test_a_registered_model_scores_as_the_served_one(served):
    """The gate scores the champion from the registry (downloaded into a directory that goes once it is
    loaded: a remote store's copies would pile up on a scheduled host)."""
    encoder = load_encoder("models:/served/1", REPO)
    torch.testing.assert_close(encoder.embed_texts(["a chest x-ray"]),
                               served.unwrap_python_model().encoder.embed_texts(["a chest x-ray"]))


def test_a_broken_registered_model_is_a_data_error_and_one_that_cannot_be_fetched_is_not(served, tmp_path,
                                                                                        monkeypatch):
    """The gate refuses a candidate when the champion itself is broken (DataError); a registry or artifact
    store it cannot reach, or a download that fails, fails the run instead, to be retried."""
    client = mlflow.MlflowClient()
    copy = Path(mlflow.artifacts.download_artifacts(client.get_model_version("served", "1").source,
                                                    dst_path=str(tmp_path / "copy")))
    gone = shutil.copytree(copy, tmp_path / "gone")
    weights = next(copy.rglob("open_clip_model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short, as by a failed upload
    broken = client.create_model_version("served", source=str(copy)).version
    with pytest.raises(DataError, match=rf"model models:/served/{broken}: its artifacts do not load"):
        load_encoder(f"models:/served/{broken}", REPO)
    for absent in ("models:/served/99", "models:/served@no-such-alias", "models:/no-such-model/1"):
        with pytest.raises(DataError, match=f"model {absent}: not in the registry"):
            load_encoder(absent, REPO)
    lost = client.create_model_version("served", source=str(gone)).version
    shutil.rmtree(gone)  # the store lost them
    with pytest.raises(DataError, match=rf"model models:/served/{lost}: its artifacts do not load"):
        load_encoder(f"models:/served/{lost}", REPO)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    registry = mlflow.get_tracking_uri()
    with socket.socket() as closed:  # bound, never listening: a connection is refused, whatever else runs
        closed.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{closed.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", down)
        in_s3 = client.create_model_version("served", source="s3://team-bucket/models/served").version
        with pytest.raises(SourceError, match=rf"model models:/served/{in_s3}: cannot download it"):
            load_encoder(f"models:/served/{in_s3}", REPO)  # the artifact store down: not a broken model
        mlflow.set_tracking_uri(down)
        try:
            with pytest.raises(TrackingServerError, match="did not answer"):
                load_encoder("models:/served/1", REPO)
        finally:
            mlflow.set_tracking_uri(registry)
