"""The image artifact builder: any image ONNX -> embedding graph -> fp32 or static int8, gated.

An image definition names an fp32 ONNX and the tensor that is the embedding (or a torch-free
converter and its weights: ``efficientnet-lite0``), and the model's preprocessing
(``retina.encoders.image.ImageSpec``). The build cuts the graph at the embedding, checks the
fp32 model tells the sample images apart (and reproduces the user's reference vectors when
given: a wrong preprocessing spec fails here, with a hint), quantizes with static QDQ
per-channel calibrated on images preprocessed exactly as served, and gates on cosine vs fp32.

The EfficientNet-Lite0 converter is ``retina.artifacts.lite0``.

Output directory:
    model.onnx        the served graph (int8 QDQ or fp32), one output: the embedding
    encoder.json      the ImageSpec the server preprocesses with
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx
import onnx.shape_inference
import onnxruntime as ort
from onnx import TensorProto, helper, version_converter
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from PIL import Image
from skimage import data as skdata

from retina.artifacts.base import BuildReport, Parity, canonical, check_reference, check_spread
from retina.artifacts.definition import ImageDefinition, ModelEntry, file_sha256
from retina.artifacts.lite0 import BUILDER_VERSION, lite0_graph
from retina.encoders import image as enc
from retina.encoders.base import EncoderKind, new_session
from retina.errors import ArtifactError

logger = logging.getLogger(__name__)

# Bump when the image recipe (cut, quantization, calibration views) changes served vectors.
RECIPE_VERSION: Final = "image-recipe-1"
DEFAULT_GATE: Final = 0.98
# Calibration and parity images from skimage.data, held apart so parity is measured on scenes
# the quantizer never saw. Greyscale and texture images make the calibration ranges cover
# more than a few photos; the parity sample is natural photographs, which is what we serve.
_CALIBRATION_SOURCES: Final = (
    "astronaut",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "camera",
    "coins",
    "moon",
    "grass",
    "gravel",
    "brick",
    "clock",
    "cell",
    "page",
)
_PARITY_SOURCES: Final = ("chelsea", "coffee", "motorcycle_right")


@dataclass(frozen=True, slots=True)
class CalibrationSettings:
    """Everything about calibration that changes the quantized weights (part of the digest)."""

    images: int = 96
    seed: int = 20240601
    batch: int = 8
    method: str = "MinMax"
    per_channel: bool = True
    parity_crops: int = 10  # random crops per parity image, plus its centre view


class ImageBuilder:
    """The ``ModelBuilder`` for every image model: an fp32 ONNX (given, or converted from
    weights without torch), cut at the embedding tensor, served as fp32 or static int8 QDQ,
    gated on parity with the fp32 graph. See the module docstring."""

    def __init__(
        self,
        *,
        name: str,
        spec: enc.ImageSpec,
        onnx_path: Path | None = None,
        convert: str | None = None,
        weights_path: Path | None = None,
        calibration: CalibrationSettings | None = None,
        calibration_dir: Path | None = None,
        sample_dir: Path | None = None,
        reference_vectors: Path | None = None,
        parity_gate: float = DEFAULT_GATE,
        precision: str = "int8",
        # One thread by default: build machines are shared, and a 2-thread median there
        # measures the neighbours as much as the model. Serving may use more.
        latency_threads: int = 1,
    ) -> None:
        if (onnx_path is None) == (convert is None):
            raise ArtifactError(f"{name}: give exactly one of `onnx` and `convert`")
        if convert is not None and (convert not in CONVERTERS or weights_path is None):
            raise ArtifactError(
                f"{name}: convert needs `weights` and one of {', '.join(sorted(CONVERTERS))}"
            )
        self.name = name
        self.kind: EncoderKind = "image"
        self.spec = spec
        self._onnx = onnx_path
        self._convert = convert
        self._weights = weights_path
        self._calibration = calibration or CalibrationSettings()
        self._calibration_dir = calibration_dir
        self._sample_dir = sample_dir
        self._reference = reference_vectors
        self._parity_gate = parity_gate
        self._precision = precision
        self._latency_threads = latency_threads

    def _source_hash(self) -> str:
        path = self._onnx if self._onnx is not None else self._weights
        assert path is not None
        return file_sha256(path)

    def _defines(self, precision: str) -> str:
        doc: dict[str, Any] = {
            "kind": "image",
            "recipe": RECIPE_VERSION,
            "source": self._source_hash(),
            "convert": None if self._convert is None else f"{self._convert}:{BUILDER_VERSION}",
            "spec": self.spec.to_dict(),
            "precision": precision,
        }
        if precision == "int8":
            doc["int8"] = {
                "calibration": dataclasses.asdict(self._calibration),
                "calibration_images": _dir_digest(self._calibration_dir),
            }
        return canonical(doc)

    def inputs_digest(self) -> str:
        h = hashlib.sha256()
        for part in (
            self._defines(self._precision),
            self.name,
            repr(self._parity_gate),
            _dir_digest(self._sample_dir),
            "" if self._reference is None else file_sha256(self._reference),
            # The quantizer's choices (which ops, how QDQ is laid out) move with its version.
            f"onnx={onnx.__version__} onnxruntime={ort.__version__}",
        ):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()

    def build(self, out_dir: Path) -> BuildReport:
        with tempfile.TemporaryDirectory(prefix=f"retina-{self.name}-") as scratch:
            work = Path(scratch)
            fp32_path = work / "fp32.onnx"
            self._fp32_model(fp32_path)
            extra: dict[str, float | str] = {}
            samples = self._parity_images()
            self._check_fp32(fp32_path, samples, extra)
            served, precision, parity = fp32_path, "fp32", None
            if self._precision in ("int8", "auto"):
                int8_path = work / "int8.onnx"
                self._quantize(fp32_path, int8_path)
                try:
                    parity = self._gate(measure_parity(fp32_path, int8_path, samples, self.spec))
                    served, precision = int8_path, "int8"
                except ArtifactError as exc:
                    if self._precision == "int8":
                        raise
                    logger.warning("%s; precision auto: serving fp32 instead", exc.message)
                    extra["auto_fallback"] = exc.message
            if parity is None:
                parity = measure_parity(fp32_path, fp32_path, samples, self.spec)
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(served, out_dir / enc.MODEL_FILE)
            (out_dir / enc.SPEC_FILE).write_text(
                json.dumps(self.spec.to_dict(), indent=2) + "\n", encoding="utf-8"
            )
            lat = batch1_latency_ms(served, self.spec, threads=self._latency_threads)
            extra["latency_ms_b1_fp32"] = batch1_latency_ms(
                fp32_path, self.spec, threads=self._latency_threads
            )
            extra["size_bytes_fp32"] = float(fp32_path.stat().st_size)
            extra["latency_threads"] = float(self._latency_threads)
            extra["calibration_images"] = float(self._calibration.images)
            dim = int(
                embed(new_session(served, intra_op_threads=1), samples[:1], self.spec).shape[1]
            )
        return BuildReport(
            name=self.name,
            kind="image",
            dim=min(dim, self.spec.dimensions or dim),
            model=enc.MODEL_FILE,
            preprocessing_version=enc.PREPROCESSING_VERSION,
            size_bytes=(out_dir / enc.MODEL_FILE).stat().st_size,
            parity=parity,
            latency_ms_b1=lat,
            files=(enc.MODEL_FILE, enc.SPEC_FILE),
            extra=extra,
            defines=self._defines(precision),
            precision=precision,
            dtype=self.spec.dtype,
            dimensions=self.spec.dimensions,
        )

    def validate(self, artifact_dir: Path) -> Parity:
        """Re-measure a built artifact against a freshly derived fp32 graph; raises
        ArtifactError below the gate. Nothing is rebuilt or written."""
        with tempfile.TemporaryDirectory(prefix=f"retina-{self.name}-") as scratch:
            fp32_path = Path(scratch) / "fp32.onnx"
            self._fp32_model(fp32_path)
            return self._gate(
                measure_parity(
                    fp32_path, artifact_dir / enc.MODEL_FILE, self._parity_images(), self.spec
                )
            )

    def _fp32_model(self, out: Path) -> None:
        """The fp32 graph whose only output is the embedding tensor ``spec.output``."""
        if self._convert is not None:
            assert self._weights is not None
            onnx.save(CONVERTERS[self._convert](self._weights), out)
            return
        assert self._onnx is not None
        cut_at_output(self._onnx, out, input_name=self.spec.input, output=self.spec.output)

    def _quantize(self, fp32_path: Path, int8_path: Path) -> None:
        cal = self._calibration
        images = calibration_images(cal, self.spec, self._calibration_dir)
        quantize_static(
            str(fp32_path),
            str(int8_path),
            _Batches(images, cal.batch, self.spec.input),
            quant_format=QuantFormat.QDQ,
            per_channel=cal.per_channel,
            activation_type=QuantType.QUInt8,
            # Signed weights: onnxruntime's VNNI kernels want u8 activations x s8 weights.
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod[cal.method],
        )

    def _parity_images(self) -> list[enc.Pixels]:
        if self._sample_dir is None:
            return parity_images(self._calibration, self.spec)
        return [enc.to_model_input(img, self.spec) for img in _read_images(self._sample_dir)]

    def _check_fp32(
        self, fp32_path: Path, samples: Sequence[enc.Pixels], extra: dict[str, float | str]
    ) -> None:
        vecs = embed(new_session(fp32_path, intra_op_threads=2), samples, self.spec)
        hint = (
            "Check the preprocessing (mean/std are on 0-255 pixels, channel_order, layout, "
            "resize_mode) and that `output` names the embedding tensor."
        )
        extra["sample_mean_pairwise_cos"] = check_spread(self.name, vecs, hint)
        if self._reference is not None:
            extra["fp32_vs_user_reference_cos_mean"] = check_reference(
                self.name, vecs, self._reference, hint
            )

    def _gate(self, parity: Parity) -> Parity:
        if parity.cos_mean < self._parity_gate:
            raise ArtifactError(
                f"{self.name}: int8 cosine mean {parity.cos_mean:.4f} vs fp32 is below the "
                f"gate {self._parity_gate} (min {parity.cos_min:.4f}, n={parity.n}). Give "
                '`calibration` a folder of your own images, or use precision = "fp32" '
                '(or "auto")'
            )
        return parity


CONVERTERS: Final[dict[str, Callable[[Path], onnx.ModelProto]]] = {
    "efficientnet-lite0": lite0_graph,
}
# QDQ quantization needs opset >= 10; older graphs (e.g. TF exports at opset 9) are upgraded.
MIN_OPSET: Final = 13


def cut_at_output(src: Path, dst: Path, *, input_name: str, output: str) -> None:
    """Write ``src`` with ``output`` (any tensor of the graph) as its only output and every
    node that does not lead to it removed; the opset raised to MIN_OPSET when older."""
    model = onnx.load(str(src))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        model = version_converter.convert_version(model, MIN_OPSET)
    graph = model.graph
    inputs = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    produced = {o for n in graph.node for o in n.output}
    if input_name not in inputs:
        raise ArtifactError(f"{src.name}: no input {input_name!r} (inputs: {inputs})")
    if output not in produced and output not in {o.name for o in graph.output}:
        outputs = [o.name for o in graph.output]
        raise ArtifactError(
            f"{src.name}: no tensor {output!r} (outputs: {outputs}; any node output may be "
            "named, e.g. the pooled features before the classifier)"
        )
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
        infos = {v.name: v for v in (*inferred.value_info, *inferred.output)}
    except (onnx.shape_inference.InferenceError, ValueError):
        infos = {}
    # Keep only the nodes (and weights) that lead to ``output``: walk back from it.
    needed, kept = {output}, []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    kept.reverse()
    initializers = [t for t in graph.initializer if t.name in needed]
    graph_inputs = [i for i in graph.input if i.name in needed]
    del graph.node[:], graph.initializer[:], graph.input[:], graph.output[:]
    graph.node.extend(kept)
    graph.initializer.extend(initializers)
    graph.input.extend(graph_inputs)
    info = infos.get(output)
    graph.output.append(
        info if info is not None else helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
    )
    onnx.save(model, str(dst))


def _dir_digest(directory: Path | None) -> str:
    if directory is None:
        return ""
    h = hashlib.sha256()
    for f in sorted(p for p in directory.iterdir() if p.is_file()):
        h.update(f.name.encode() + b"\0" + file_sha256(f).encode())
    return h.hexdigest()


def _read_images(directory: Path) -> list[Image.Image]:
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if len(paths) < 2:
        raise ArtifactError(f"{directory}: need at least 2 images ({', '.join(_IMAGE_SUFFIXES)})")
    return [Image.open(p).convert("RGB") for p in paths]


_IMAGE_SUFFIXES: Final = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def image_builder(entry: ModelEntry, *, latency_threads: int = 1) -> ImageBuilder:
    """The builder for an image definition."""
    d = entry.definition
    assert isinstance(d, ImageDefinition)
    onnx_path = entry.path(d.onnx) if d.onnx else None
    if d.convert is not None:
        input_name, output = enc.INPUT_NAME, enc.OUTPUT_NAME
    elif onnx_path is not None:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
        initializers = {t.name for t in graph.initializer}
        first_input = next(i.name for i in graph.input if i.name not in initializers)
        input_name, output = d.input or first_input, d.output or graph.output[0].name
    else:
        raise ArtifactError(f"model {entry.name!r}: set `onnx` (or `convert` + `weights`)")
    p = d.preprocessing
    spec = enc.ImageSpec(
        size=p.size,
        resize=p.resize,
        resize_mode=p.resize_mode,
        interpolation=p.interpolation,
        mean=p.mean,
        std=p.std,
        channel_order=p.channel_order,
        layout=p.layout,
        input=input_name,
        output=output,
        normalize=d.normalize,
        dimensions=d.dimensions,
        dtype=d.dtype,
    )
    return ImageBuilder(
        name=entry.name,
        spec=spec,
        onnx_path=onnx_path,
        convert=d.convert,
        weights_path=entry.path(d.weights) if d.weights else None,
        calibration=CalibrationSettings(images=d.calibration_images),
        calibration_dir=entry.path(d.calibration) if d.calibration else None,
        sample_dir=entry.path(d.sample) if d.sample else None,
        reference_vectors=entry.path(d.reference) if d.reference else None,
        parity_gate=d.gate or DEFAULT_GATE,
        precision=d.precision,
        latency_threads=latency_threads,
    )


# --- calibration and parity data -------------------------------------------------------------


def _skimage_rgb(name: str) -> npt.NDArray[np.uint8]:
    if name == "motorcycle_right":
        arr = np.asarray(getattr(skdata, "stereo_motorcycle")()[1])  # noqa: B009  # untyped
    else:
        arr = np.asarray(getattr(skdata, name)())
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3].astype(np.uint8))


def _random_view(arr: npt.NDArray[np.uint8], rng: np.random.Generator) -> Image.Image:
    """A random crop (25-100% of the area, aspect 3:4-4:3), flip and downscale: the spread of
    framings and resolutions real traffic has, so calibration ranges are not tuned to one."""
    h, w = arr.shape[:2]
    area = h * w * rng.uniform(0.25, 1.0)
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    ch = min(h, round(math.sqrt(area / aspect)))
    cw = min(w, round(math.sqrt(area * aspect)))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = arr[top : top + ch, left : left + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    img = Image.fromarray(np.ascontiguousarray(crop))
    scale = rng.uniform(0.4, 1.0)
    size = (max(16, round(cw * scale)), max(16, round(ch * scale)))
    return img.resize(size, Image.Resampling.BILINEAR)


def calibration_images(
    settings: CalibrationSettings,
    spec: enc.ImageSpec = enc.LITE0,
    directory: Path | None = None,
) -> list[enc.Pixels]:
    """``settings.images`` random views of the built-in photos (or of the images in
    ``directory``), preprocessed as served."""
    rng = np.random.default_rng(settings.seed)
    if directory is None:
        sources = [_skimage_rgb(name) for name in _CALIBRATION_SOURCES]
    else:
        sources = [np.asarray(img) for img in _read_images(directory)]
    return [
        enc.to_model_input(_random_view(sources[i % len(sources)], rng), spec)
        for i in range(settings.images)
    ]


def parity_images(
    settings: CalibrationSettings, spec: enc.ImageSpec = enc.LITE0
) -> list[enc.Pixels]:
    """Held-out photographs: each one's centre view plus ``parity_crops`` random views."""
    rng = np.random.default_rng(settings.seed + 1)
    out: list[enc.Pixels] = []
    for name in _PARITY_SOURCES:
        arr = _skimage_rgb(name)
        out.append(enc.to_model_input(Image.fromarray(arr), spec))
        out.extend(
            enc.to_model_input(_random_view(arr, rng), spec) for _ in range(settings.parity_crops)
        )
    return out


class _Batches(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime is untyped
    def __init__(
        self, images: Sequence[enc.Pixels], batch: int, input_name: str = enc.INPUT_NAME
    ) -> None:
        self._iter: Iterator[dict[str, npt.NDArray[np.float32]]] = (
            {input_name: np.stack(images[i : i + batch])} for i in range(0, len(images), batch)
        )

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        return next(self._iter, None)


# --- measurements --------------------------------------------------------------------------


def embed(
    session: ort.InferenceSession,
    images: Sequence[enc.Pixels],
    spec: enc.ImageSpec = enc.LITE0,
) -> npt.NDArray[np.float32]:
    """Raw (unnormalised, untruncated) embeddings, flattened per image, in batches small
    enough for a 2-core machine."""
    parts = [
        session.run([spec.output], {spec.input: np.stack(images[i : i + 16])})[0]
        for i in range(0, len(images), 16)
    ]
    return np.concatenate([p.reshape(len(p), -1) for p in parts]).astype(np.float32, copy=False)


def measure_parity(
    reference: Path,
    candidate: Path,
    images: Sequence[enc.Pixels],
    spec: enc.ImageSpec = enc.LITE0,
) -> Parity:
    ref = embed(new_session(reference, intra_op_threads=2), images, spec)
    got = embed(new_session(candidate, intra_op_threads=2), images, spec)
    if spec.dimensions is not None:
        ref, got = ref[:, : spec.dimensions], got[:, : spec.dimensions]
    cos = np.sum(ref * got, axis=1) / (
        np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12
    )
    return Parity(
        cos_min=float(cos.min()),
        cos_mean=float(cos.mean()),
        n=len(images),
        reference="fp32 ONNX (onnxruntime), held-out sample images",
    )


def batch1_latency_ms(
    model: Path, spec: enc.ImageSpec = enc.LITE0, *, threads: int, runs: int = 30
) -> float:
    """Median batch-1 latency in the served session configuration, after warm-up."""
    session = new_session(model, intra_op_threads=threads)
    shape = (1, 3, spec.size, spec.size) if spec.layout == "nchw" else (1, spec.size, spec.size, 3)
    x = {spec.input: np.zeros(shape, dtype=np.float32)}
    for _ in range(5):
        session.run([spec.output], x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run([spec.output], x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)
