"""The image encoder: EfficientNet-Lite0 (ImageNet, 1280-d pooled features) as int8 ONNX.

It owns the whole serving path of an image — safe decoding of untrusted bytes, the model's
preprocessing, the onnxruntime session — and the artifact's serving contract (file, input and
output names), which ``retina.artifacts.image`` builds against. ``to_model_input`` is the one
preprocessing function: calibration, validation and serving all call it, so the quantizer sees
exactly the pixels the server will send.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from PIL import Image, ImageOps

from retina.encoders.base import EncoderKind, l2_normalize, new_session
from retina.errors import ItemFailed

NAME: Final = "efficientnet-lite0"
DIM: Final = 1280
MODEL_FILE: Final = "model.onnx"
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


def to_model_input(img: Image.Image) -> Pixels:
    """A decoded image -> the (3, 224, 224) float32 tensor the network expects: centre square
    crop of 0.875 of the shorter side, bicubic resize to 224, TF-style normalisation."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    width, height = img.size
    crop = min(width, height) * IMAGE_SIZE / RESIZE_SIZE
    left, top = (width - crop) / 2, (height - crop) / 2
    # One resample from the crop box straight to 224: no intermediate 256 image to allocate.
    img = img.resize(
        (IMAGE_SIZE, IMAGE_SIZE),
        Image.Resampling.BICUBIC,
        box=(left, top, left + crop, top + crop),
    )
    arr = np.asarray(img, dtype=np.float32)
    arr = (arr - PIXEL_MEAN) / PIXEL_STD
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


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
    """EfficientNet-Lite0 over onnxruntime. ``preprocess`` and ``infer`` are blocking and
    thread-safe (onnxruntime sessions allow concurrent ``run``); call them in an executor."""

    kind: EncoderKind = "image"
    dim: int = DIM

    def __init__(
        self,
        session: ort.InferenceSession,
        *,
        revision: str,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        name: str = NAME,
    ) -> None:
        self.name = name
        self.revision = revision
        self._session = session
        self._max_pixels = max_pixels
        self._oov: npt.NDArray[np.float32] | None = None

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
        """Open ``artifact_dir/model.onnx``. ``revision`` is computed by the caller from the
        artifact; the encoder only carries it."""
        return cls(
            new_session(artifact_dir / MODEL_FILE, intra_op_threads=intra_op_threads),
            revision=revision,
            max_pixels=max_pixels,
            name=name,
        )

    def preprocess(self, raw: str | bytes) -> Pixels:
        """Image bytes -> a (3, 224, 224) float32 tensor; ItemFailed for this item alone."""
        if isinstance(raw, str):
            raise ItemFailed("not_an_image", "the image encoder takes image bytes, not text")
        return to_model_input(decode_image(raw, max_pixels=self._max_pixels))

    def infer(self, batch: Sequence[Pixels]) -> npt.NDArray[np.float32]:
        """Prepared images -> (n, 1280) L2-normalised float32 embeddings."""
        if not batch:
            return np.zeros((0, DIM), dtype=np.float32)
        (out,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: np.stack(batch)})
        emb: npt.NDArray[np.float32] = np.asarray(out, dtype=np.float32)
        # ReLU6 features are non-negative, so a zero vector is possible only for an all-dead
        # input; the floor keeps it zero rather than NaN.
        return l2_normalize(emb)

    def oov(self) -> npt.NDArray[np.float32]:
        """The embedding of a mid-grey image, computed once."""
        if self._oov is None:
            grey = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), _GREY)
            self._oov = self.infer([to_model_input(grey)])[0]
        return self._oov.copy()
