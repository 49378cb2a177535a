"""The image encoder: any image ONNX (EfficientNet-Lite0 by default) with its preprocessing.

It owns the whole serving path of an image — safe decoding of untrusted bytes, the model's
preprocessing (``ImageSpec``: size, resize and crop mode, mean/std, channel order, layout), the
onnxruntime session — and the artifact's serving contract (``model.onnx`` + ``encoder.json``),
which ``retina.artifacts.image`` builds against. ``to_model_input`` is the one preprocessing
function: calibration, validation and serving all call it, so the quantizer sees exactly the
pixels the server will send. The module constants are EfficientNet-Lite0's, the defaults of
an artifact without ``encoder.json``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from PIL import Image, ImageOps

from retina.encoders.base import EncoderKind, OutputDtype, finish_vectors, new_session
from retina.errors import ArtifactError, ItemFailed

NAME: Final = "efficientnet-lite0"
DIM: Final = 1280
MODEL_FILE: Final = "model.onnx"
SPEC_FILE: Final = "encoder.json"
INPUT_NAME: Final = "pixels"
OUTPUT_NAME: Final = "embedding"

IMAGE_SIZE: Final = 224
# The centre crop keeps 224/256 of the shorter side: the 0.875 crop ratio ImageNet models
# (and the TF EfficientNet-Lite eval pipeline, CROP_PADDING = 32) are evaluated with.
RESIZE_SIZE: Final = 256
# EfficientNet-Lite was trained in TF with (x - 127) / 128 on 0-255 pixels (the lite builder's
# MEAN_RGB/STDDEV_RGB: "inception-style for better post-quantization"), not the torchvision
# ImageNet mean/std the PyTorch port's README shows; the port copied the TF weights unchanged.
# Measured: espresso at p=0.95 with these constants vs 0.78 with ImageNet's, moped 0.61 vs 0.46.
PIXEL_MEAN: Final = 127.0
PIXEL_STD: Final = 128.0
# Part of the revision: bump whenever to_model_input (or decoding) changes its output.
PREPROCESSING_VERSION: Final = "lite0-v1:crop0.875-bicubic224-tf127/128"

# Pillow's own decompression-bomb guard is process-global and raises only at twice its limit;
# our per-encoder cap is checked against the header before any pixel is decoded.
DEFAULT_MAX_PIXELS: Final = 40_000_000
_GREY: Final = (128, 128, 128)

Pixels = npt.NDArray[np.float32]
_RESAMPLING: Final = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """An image model's serving contract: preprocessing, tensor names and post-processing.
    Written by the build into ``encoder.json``; every field is part of the revision.

    ``resize_mode``: ``shorter`` resizes the shorter side to ``resize`` (keeping the aspect)
    and centre-crops ``size`` square; ``squash`` resizes to ``resize`` x ``resize`` (aspect
    lost) and centre-crops ``size``. ``mean``/``std`` are per channel on 0-255 pixels, in the
    model's ``channel_order``. ``layout``: ``nchw`` or ``nhwc``. ``output`` is the tensor whose
    value (flattened per image) is the embedding."""

    size: int = IMAGE_SIZE
    resize: int = RESIZE_SIZE
    resize_mode: Literal["shorter", "squash"] = "shorter"
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    mean: tuple[float, float, float] = (PIXEL_MEAN, PIXEL_MEAN, PIXEL_MEAN)
    std: tuple[float, float, float] = (PIXEL_STD, PIXEL_STD, PIXEL_STD)
    channel_order: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw", "nhwc"] = "nchw"
    input: str = INPUT_NAME
    output: str = OUTPUT_NAME
    normalize: bool = True
    dimensions: int | None = None
    dtype: OutputDtype = "float32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ImageSpec:
        fields = dict(doc)
        for key in ("mean", "std"):
            if key in fields:
                fields[key] = tuple(float(v) for v in fields[key])
        return cls(**fields)

    @classmethod
    def read(cls, artifact_dir: Path) -> ImageSpec:
        """The spec in ``artifact_dir``, or Lite0's when the build predates specs."""
        path = artifact_dir / SPEC_FILE
        if not path.is_file():
            return cls()
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as exc:
            raise ArtifactError(f"unreadable {path}: {exc}") from exc


LITE0: Final = ImageSpec()


def to_model_input(img: Image.Image, spec: ImageSpec = LITE0) -> Pixels:
    """A decoded image -> the float32 tensor (without batch axis) the network expects."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    width, height = img.size
    size = spec.size
    if spec.resize_mode == "shorter":
        crop_w = crop_h = min(width, height) * size / spec.resize
    else:
        crop_w, crop_h = width * size / spec.resize, height * size / spec.resize
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    # One resample from the crop box straight to the input size: no intermediate image.
    img = img.resize(
        (size, size), _RESAMPLING[spec.interpolation], box=(left, top, left + crop_w, top + crop_h)
    )
    arr = np.asarray(img, dtype=np.float32)
    if spec.channel_order == "bgr":
        arr = arr[:, :, ::-1]
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    arr = np.asarray((arr - mean) / std, dtype=np.float32)
    if spec.layout == "nchw":
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr, dtype=np.float32)


# Pillow format names of what ``retina.fetch.sniff_image_format`` lets through.
ACCEPTED_FORMATS: Final = ("JPEG", "PNG", "GIF", "BMP", "TIFF")


def decode_image(raw: bytes, *, max_pixels: int) -> Image.Image:
    """Untrusted bytes -> an RGB image, refusing oversized images before decoding any pixels.
    Raises ItemFailed with ``empty_input``, ``too_many_pixels`` or ``not_an_image``."""
    if not raw:
        raise ItemFailed("empty_input", "the image is empty")
    try:
        # open() parses the header only; pixel data is decoded by load() below. Only the
        # formats the fetcher accepts are tried: every other Pillow plugin is attack surface
        # (and raises its own exception types) for inputs we never serve.
        img = Image.open(io.BytesIO(raw), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ItemFailed("too_many_pixels", str(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Pillow signals malformed input with any of these, depending on the format plugin.
        raise ItemFailed("not_an_image", f"cannot identify the image: {exc}") from None
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise ItemFailed(
                "too_many_pixels",
                f"image is {width}x{height} = {width * height} pixels, limit {max_pixels}",
            )
        # JPEG can decode at 1/2, 1/4 or 1/8 scale for almost nothing; draft keeps both sides
        # at least RESIZE_SIZE so the model still sees a downscaled, not an upscaled, image.
        img.draft("RGB", (RESIZE_SIZE, RESIZE_SIZE))
        try:
            img.load()
            # Phone photos store rotation in EXIF; without this a portrait shot is sideways.
            oriented = ImageOps.exif_transpose(img)
            return _to_rgb(oriented)
        except Image.DecompressionBombError as exc:
            raise ItemFailed("too_many_pixels", str(exc)) from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ItemFailed("not_an_image", f"cannot decode the image: {exc}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten transparency onto white (how product images are displayed) and drop alpha."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


class ImageEncoder:
    """An image ONNX over onnxruntime. ``preprocess`` and ``infer`` are blocking and
    thread-safe (onnxruntime sessions allow concurrent ``run``); call them in an executor."""

    kind: EncoderKind = "image"

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        revision: str,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        name: str = NAME,
        spec: ImageSpec = LITE0,
    ) -> None:
        self.name = name
        self.revision = revision
        self.spec = spec
        self._session = session
        self._max_pixels = max_pixels
        self._oov: npt.NDArray[np.float32] | None = None
        # The dimension from a real run (a graph's static shapes may be symbolic). Without a
        # session the encoder only preprocesses (tests of decoding), and Lite0's is assumed.
        self.dim = DIM
        if session is not None:
            self.dim = int(self._raw([to_model_input(Image.new("RGB", (8, 8)), spec)]).shape[1])
        if spec.dimensions is not None:
            self.dim = min(self.dim, spec.dimensions)

    @classmethod
    def load(
        cls,
        artifact_dir: Path,
        *,
        revision: str,
        intra_op_threads: int,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        name: str = NAME,
    ) -> ImageEncoder:
        """Open ``artifact_dir/model.onnx`` with the ``encoder.json`` beside it. ``revision``
        is the catalog's; the encoder only carries it."""
        return cls(
            new_session(artifact_dir / MODEL_FILE, intra_op_threads=intra_op_threads),
            revision=revision,
            max_pixels=max_pixels,
            name=name,
            spec=ImageSpec.read(artifact_dir),
        )

    def preprocess(self, raw: str | bytes) -> Pixels:
        """Image bytes -> the model's input tensor; ItemFailed for this item alone."""
        if isinstance(raw, str):
            raise ItemFailed("not_an_image", "the image encoder takes image bytes, not text")
        return to_model_input(decode_image(raw, max_pixels=self._max_pixels), self.spec)

    def infer(self, batch: Sequence[Pixels]) -> npt.NDArray[np.float32]:
        """Prepared images -> (n, dim) float32 embeddings, L2-normalised unless the spec says
        otherwise (the floor keeps an all-zero row zero rather than NaN)."""
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        spec = self.spec
        return finish_vectors(
            self._raw(batch), normalize=spec.normalize, dimensions=spec.dimensions, dtype=spec.dtype
        )

    def _raw(self, batch: Sequence[Pixels]) -> npt.NDArray[np.float32]:
        (out,) = self._session.run([self.spec.output], {self.spec.input: np.stack(batch)})
        arr = np.asarray(out, dtype=np.float32)
        return arr.reshape(len(batch), -1)

    def oov(self) -> npt.NDArray[np.float32]:
        """The embedding of a mid-grey image, computed once."""
        if self._oov is None:
            grey = Image.new("RGB", (self.spec.size, self.spec.size), _GREY)
            self._oov = self.infer([to_model_input(grey, self.spec)])[0]
        return self._oov.copy()
