"""Random GGML blocks of every kept kind, for dequantization and kernel tests.

`gguf.quants` cannot quantize K-quants, so blocks are random bytes with their
float16 scale fields replaced by finite values (random bytes there could be
inf or NaN). Every other bit pattern is a valid block.
"""

from __future__ import annotations

import numpy as np

from exoquic.models.quant import BLOCK_BYTES, VALUES_PER_BLOCK, row_bytes
from exoquic.models.weights import QuantizedTensor, QuantKind

ALL_KINDS: list[QuantKind] = [
    "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k", "iq4_nl", "iq4_xs", "f16",
    "bf16",
]  # fmt: skip

# Byte offsets of the float16 fields inside one block.
_F16_FIELDS: dict[QuantKind, tuple[int, ...]] = {
    "q4_0": (0,), "q4_1": (0, 2), "q5_0": (0,), "q5_1": (0, 2), "q8_0": (0,),
    "q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,), "iq4_nl": (0,), "iq4_xs": (0,),
}  # fmt: skip
# IQ4's codebook values reach 127 (and IQ4_XS's sub-scales 32): their d is smaller.
_INT_FACTOR: dict[QuantKind, float] = {"iq4_nl": 8.0, "iq4_xs": 8.0}


def random_blocks(
    kind: QuantKind, rows: int, cols: int, seed: int = 0, scale: float = 1.0
) -> QuantizedTensor:
    """A `(rows, cols)` tensor of random blocks of `kind`, weights of magnitude ~`scale`."""
    rng = np.random.default_rng(seed)
    if kind in ("f16", "bf16"):
        values = (scale * rng.standard_normal((rows, cols))).astype(np.float32)
        if kind == "f16":
            blocks = values.astype(np.float16)
        else:  # bf16 is the top half of a float32
            blocks = (values.view(np.uint32) >> 16).astype(np.uint16)
        return QuantizedTensor(kind, blocks.view(np.uint8).reshape(rows, cols * 2), (rows, cols))
    n = cols // VALUES_PER_BLOCK[kind]
    blocks = rng.integers(0, 256, (rows, n, BLOCK_BYTES[kind]), dtype=np.uint8)
    # Scales sized so weights are ~1: a K-quant's d multiplies 6-bit (or int8) sub-scales.
    d = scale / 8 if VALUES_PER_BLOCK[kind] == 32 else scale / 256
    d /= _INT_FACTOR.get(kind, 1.0)
    for offset in _F16_FIELDS[kind]:
        field = (rng.uniform(0.5, 1.5, (rows, n)) * d).astype(np.float16)
        blocks[:, :, offset : offset + 2] = field.view(np.uint8).reshape(rows, n, 2)
    return QuantizedTensor(kind, blocks.reshape(rows, row_bytes(kind, cols)), (rows, cols))
