"""MLX's own dequantization of a GGML tensor repacked by `ggml_pack.to_affine`."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from exoquic.engines.mlx.ggml_pack import GROUP_SIZE, to_affine
from exoquic.models.weights import QuantizedTensor


def mlx_dequantize(t: QuantizedTensor) -> np.ndarray:
    """The float weights MLX decodes from `t`'s affine groups."""
    p = to_affine(t)
    out = mx.dequantize(
        mx.array(p.weight),
        mx.array(p.scales),
        mx.array(p.biases),
        group_size=GROUP_SIZE,
        bits=p.bits,
    )
    return np.array(out)
