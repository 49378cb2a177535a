"""The torch-free EfficientNet-Lite0 converter: legacy ``.pth`` weights -> fp32 ONNX.

The EfficientNet-Lite0 converter owns the network definition (a transcription of
``efficientnet-lite-pytorch==0.1.0``'s model.py/utils.py for lite0: stem, 16 MBConv blocks
without squeeze-excite, ReLU6, TF "same" padding, 1280-channel head, global average pool) and
BatchNorm folding. Torch is never imported: the weights come from the legacy ``.pth`` through
``retina.artifacts.torch_pickle`` and the graph is written with onnx.helper.
The image builder (``retina.artifacts.image``) quantizes and gates its output like any image ONNX.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from retina.artifacts.torch_pickle import load_state_dict
from retina.encoders import image as enc
from retina.errors import ArtifactError

# Bump when the Lite0 converter changes the graph it writes.
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

Weights = dict[str, npt.NDArray[Any]]


def lite0_graph(weights_path: Path) -> onnx.ModelProto:
    """The torch-free EfficientNet-Lite0 converter: legacy .pth -> fp32 embedding graph."""
    return build_graph(load_state_dict(weights_path), with_logits=False)


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
