"""C kernels that compute straight on GGML block bytes: Q5_0, Q5_1, Q4_K, Q5_K, Q6_K.

The weights stay exactly as in the GGUF file (no repacked copy), so a node can
use them from the file's memory map. Each kernel walks a weight row block by
block; a "super-block" is one GGML block (32 values for Q5_0/Q5_1, 256 for the
K-quants), split into sub-blocks of 32 values that each meet one int16
activation block of `cpu_kernels.QUANTIZE`:

    kind  sub-block j of 32 values decodes as       dot product per sub-block
    q5_0  d * (q - 16), q 5-bit                      ds * dx * sum((q - 16) qx)
    q5_1  d * q + m                                  ds * dx * sum(q qx) + m * dx sum(qx)
    q4_k  d*sc[j] * q - dmin*mn[j], 6-bit sc, mn     likewise, ds = d*sc[j], dm = -dmin*mn[j]
    q5_k  as q4_k with a 5th bit from qh             likewise
    q6_k  d*sc[i/16] * (q - 32), int8 sc per 16      d * dx * sum((q - 32) sc qx)

Q6_K's int8 sub-scales are folded into the int16 weight codes (|(q-32) sc| <=
4096), so two pmaddwd results still fit an int32 lane next to |qx| <= 32767.

`Format`s here plug into `cpu_kernels.gemm_source` (prefill) as they are;
`matmul_source` is the per-row integer kernel for these layouts. Float16
fields are decoded with integer operations (exact, no F16C needed; no inf or
NaN scales expected).
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Template

from exoquic.engines.tinygrad import cpu_kernels
from exoquic.engines.tinygrad.cpu_kernels import GROUP_ROWS, Format

# float16 at byte pointer q -> float (normal and subnormal values exactly).
_F16 = """
typedef unsigned char u8x8 __attribute__((ext_vector_type(8), aligned(1)));
#define F16(q) ({ const unsigned h_ = (unsigned)(q)[0] | ((unsigned)(q)[1] << 8); \\
  const unsigned e_ = (h_ >> 10) & 31, m_ = h_ & 1023; \\
  union { unsigned u; float f; } v_; v_.u = ((e_ + 112) << 23) | (m_ << 13); \\
  const float r_ = e_ ? v_.f : (float)m_ * 5.9604644775390625e-08f; (h_ & 0x8000) ? -r_ : r_; })
"""


@dataclass(frozen=True)
class BlockFormat:
    """How to read one GGML block type. C snippets see `blk` (the super-block's bytes)
    and, per sub-block, `j` (a constant); `setup` sets the f32x8 `ds8` lane j to sub-block
    j's scale (and `dm8` to its offset, with `offset`)."""

    kind: str
    values: int  # values per super-block
    nbytes: int  # bytes per super-block
    setup: str
    code: str  # int code of value i of sub-block j, as used in the dot product
    unpack_avx2: str  # int16 codes of sub-block j: `wl` (values 0-15), `wh` (16-31)
    offset: bool
    # exact dequantization of value i of sub-block j: `dq_scale * dq_code (+ dm[j])`
    dq_scale: str = "ds8[j]"
    dq_code: str = ""

    @property
    def subs(self) -> int:
        return self.values // 32


# The 12 scale bytes of a K-quant super-block hold 8 6-bit scales and 8 6-bit minimums
# (llama.cpp's `get_scale_min_k4`), unpacked four bytes at a time.
_K_SCALES = """const float d = F16(blk), dmin = F16(blk + 2);
      unsigned u[4]; __builtin_memcpy(u, blk + 4, 12);
      u[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
      const unsigned mins_lo = u[1] & 0x3f3f3f3fu;
      u[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
      u[2] = mins_lo; u[0] &= 0x3f3f3f3fu;
      ds8 = __builtin_convertvector(*(const u8x8 *)u, f32x8) * d;
      dm8 = -(__builtin_convertvector(*(const u8x8 *)(u + 2), f32x8) * dmin);"""

# 4-bit codes of a K-quant sub-block: 32 bytes hold sub-blocks 2k (low nibbles) and 2k + 1.
_K_NIBBLES = """const unsigned char *q = QS + 32 * (j >> 1); const short sh = (short)(4 * (j & 1));
        i16x16 l = __builtin_convertvector(*(const u8x16 *)q, i16x16);
        i16x16 h = __builtin_convertvector(*(const u8x16 *)(q + 16), i16x16);
        l = (l >> sh) & (short)15; h = (h >> sh) & (short)15;"""

_PLAIN_CODES = "\n        v16hi wl = (v16hi)l, wh = (v16hi)h;"

Q4_K = BlockFormat(
    kind="q4_k",
    values=256,
    nbytes=144,
    setup=_K_SCALES,
    code="((blk[16 + 32 * (j >> 1) + i] >> (4 * (j & 1))) & 15)",
    unpack_avx2=_K_NIBBLES.replace("QS", "(blk + 16)")
    + "\n        v16hi wl = (v16hi)l, wh = (v16hi)h;",
    offset=True,
)

Q5_K = BlockFormat(
    kind="q5_k",
    values=256,
    nbytes=176,
    setup=_K_SCALES,
    code="(((blk[48 + 32 * (j >> 1) + i] >> (4 * (j & 1))) & 15)"
    " | (((blk[16 + i] >> j) & 1) << 4))",
    unpack_avx2=_K_NIBBLES.replace("QS", "(blk + 48)")
    + """
        i16x16 hl = __builtin_convertvector(*(const u8x16 *)(blk + 16), i16x16);
        i16x16 hh = __builtin_convertvector(*(const u8x16 *)(blk + 32), i16x16);
        v16hi wl = (v16hi)(l | (((hl >> (short)j) & (short)1) << 4));
        v16hi wh = (v16hi)(h | (((hh >> (short)j) & (short)1) << 4));""",
    offset=True,
)

# Q6_K: ql[128] | qh[64] | int8 scales[16] | f16 d. Sub-block j (32 values) sits in half
# j / 4: low bits in ql at 64 (j / 4) + 32 (j % 2), nibble (j / 2) % 2; high 2 bits in qh at
# 128 + 32 (j / 4), bits 2 (j % 4); values 16 k.. 16 k + 15 use scale 2 j + k.
_Q6 = (
    "(((blk[64 * (j >> 2) + 32 * (j & 1) + i] >> (4 * ((j >> 1) & 1))) & 15)"
    " | (((blk[128 + 32 * (j >> 2) + i] >> (2 * (j & 3))) & 3) << 4))"
)
_Q6_SCALE = "((const signed char *)(blk + 192))[2 * j + (i >> 4)]"

Q6_K = BlockFormat(
    kind="q6_k",
    values=256,
    nbytes=210,
    setup="const float d = F16(blk + 208); ds8 = d;",
    code=f"(({_Q6} - 32) * {_Q6_SCALE})",
    unpack_avx2="""const unsigned char *ql = blk + 64 * (j >> 2) + 32 * (j & 1);
        const unsigned char *qh = blk + 128 + 32 * (j >> 2);
        const short s4 = (short)(4 * ((j >> 1) & 1)), s2 = (short)(2 * (j & 3));
        const signed char *sc6 = (const signed char *)(blk + 192) + 2 * j;
        i16x16 l = __builtin_convertvector(*(const u8x16 *)ql, i16x16);
        i16x16 h = __builtin_convertvector(*(const u8x16 *)(ql + 16), i16x16);
        i16x16 hl = __builtin_convertvector(*(const u8x16 *)qh, i16x16);
        i16x16 hh = __builtin_convertvector(*(const u8x16 *)(qh + 16), i16x16);
        l = (((l >> s4) & (short)15) | (((hl >> s2) & (short)3) << 4)) - (short)32;
        h = (((h >> s4) & (short)15) | (((hh >> s2) & (short)3) << 4)) - (short)32;
        v16hi wl = (v16hi)(l * (short)sc6[0]), wh = (v16hi)(h * (short)sc6[1]);""",
    offset=False,
    dq_scale=f"(d * (float){_Q6_SCALE})",
    dq_code=f"({_Q6} - 32)",
)

# Q5_0 / Q5_1: value i has its low 4 bits in byte i % 16 (nibble i / 16) and its 5th bit
# at bit i of the little-endian u32 `qh`.
_Q5_CODE = "(int)(((QS[i & 15] >> (4 * (i >> 4))) & 15) | (((qh >> i) & 1) << 4))"
_Q5_AVX2 = """const i16x16 bit = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192,
                             16384, -32768};
        i16x16 c = __builtin_convertvector(*(const u8x16 *)QS, i16x16);
        i16x16 hl = (short)(qh & 0xffff), hh = (short)(qh >> 16);
        i16x16 l = (c & (short)15) | (((hl & bit) != 0) & (short)16);
        i16x16 h = (c >> (short)4) | (((hh & bit) != 0) & (short)16);"""

Q5_0 = BlockFormat(
    kind="q5_0",
    values=32,
    nbytes=22,
    setup="ds8 = F16(blk); unsigned qh; __builtin_memcpy(&qh, blk + 2, 4);",
    code="(" + _Q5_CODE.replace("QS", "(blk + 6)") + " - 16)",
    unpack_avx2=_Q5_AVX2.replace("QS", "(blk + 6)")
    + "\n        v16hi wl = (v16hi)(l - (short)16), wh = (v16hi)(h - (short)16);",
    offset=False,
)

Q5_1 = BlockFormat(
    kind="q5_1",
    values=32,
    nbytes=24,
    setup="ds8 = F16(blk); dm8 = F16(blk + 2); unsigned qh; __builtin_memcpy(&qh, blk + 4, 4);",
    code=_Q5_CODE.replace("QS", "(blk + 8)"),
    unpack_avx2=_Q5_AVX2.replace("QS", "(blk + 8)")
    + "\n        v16hi wl = (v16hi)l, wh = (v16hi)h;",
    offset=True,
)

FORMATS: dict[str, BlockFormat] = {f.kind: f for f in (Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)}


def constants(fmt: BlockFormat, cols: int) -> dict[str, int | str]:
    """Shape constants of a weight row of `cols` values."""
    return {"NSB": cols // fmt.values, "ROWBYTES": cols // fmt.values * fmt.nbytes}


def _superblocks(fmt: BlockFormat, per_block: str, per_sub: str) -> str:
    """C looping over the super-blocks of weight row `p`: `per_block` once each (after
    `setup`), then `per_sub` for each sub-block `j`, unrolled so `j` is a constant."""
    subs = "\n      ".join(
        f"{{ const int j = {j}, b = s * {fmt.subs} + {j}; (void)b; {per_sub} }}"
        for j in range(fmt.subs)
    )
    return f"""for (int s = 0; s < $NSB; s++) {{
      const unsigned char *blk = p + (long)s * {fmt.nbytes};
      f32x8 ds8 = 0.0f, dm8 = 0.0f;
      (void)dm8;
      {fmt.setup}
      {per_block}
      {subs}
    }}"""


def gemm_format(fmt: BlockFormat) -> Format:
    """The `cpu_kernels.Format` whose `setup` and `dequantize` feed `gemm_source`.

    Dequantization is exact: the same float32 operations, in the same order, as
    `gguf.quants` (each product and sum its own statement, so nothing is fused).
    """
    code = fmt.dq_code or fmt.code
    offset = "v = v + dm8[j];" if fmt.offset else ""
    body = f"""for (int i = 0; i < 32; i++) {{
          const float scale = {fmt.dq_scale};
          float v = scale * (float){code};
          {offset}
          row[b * 32 + i] = v;
        }}"""
    return Format(
        setup="const unsigned char *p = $P + (long)n * $ROWBYTES;",
        unpack_avx2="",
        dot_portable="",
        offset=False,
        dequantize=_superblocks(fmt, "", body),
    )


def dequantize_source(fmt: BlockFormat) -> Template:
    """`$OUT (N, K)` float32 = the weights `$P` (N rows of K values), exactly."""
    g = gemm_format(fmt)
    return Template(
        _F16
        + f"""
float *out = $OUT;
for (int n = 0; n < $N; n++) {{
  {g.setup}
  float *row = out + (long)n * $K;
  {g.dequantize}
}}
"""
    )


def gemm_source(fmt: BlockFormat) -> Template:
    """`cpu_kernels.gemm_source` (prefill chunks) for weights in `fmt` blocks."""
    return Template(_F16 + cpu_kernels.gemm_source(gemm_format(fmt)).template)


def matmul_source(fmt: BlockFormat, rows: int) -> Template:
    """`$OUT (R, N) = x (R, K) @ W.T` for `rows` int16 activation rows, W in `fmt` blocks.

    Rows go in groups of up to `GROUP_ROWS` that share each unpacked sub-block; each
    row has its own accumulators, so its arithmetic is the same in any group size.
    """
    groups = [list(range(r, min(r + GROUP_ROWS, rows))) for r in range(0, rows, GROUP_ROWS)]
    body = "\n".join(_group(fmt, g) for g in groups)
    return Template(
        _F16
        + f"""
float *out = $OUT; const short *xq = $XQ; const float *xs = $XS;
$STORE_SETUP
const int n0 = (int)((long)$N * $TID / $THREADS), n1 = (int)((long)$N * ($TID + 1) / $THREADS);
for (int n = n0; n < n1; n++) {{
  const unsigned char *p = $P + (long)n * $ROWBYTES;
{body}
}}
"""
    )


def _group(fmt: BlockFormat, rows: list[int]) -> str:
    """Rows `rows` against weight row `p`: per row, `a{r}` sums the scaled integer dot
    products, `o{r}` the offsets' share (`dm * dx * sum(qx)` per sub-block)."""
    decl = " ".join(f"f32x8 a{r} = 0.0f, o{r} = 0.0f;" for r in rows)
    # Per super-block and row: sx = ds * dx of each sub-block (lane j), and the offsets.
    per_block = []
    for r in rows:
        xs = f"(xs + (long){r} * 2 * $B + s * {fmt.subs})"
        if fmt.subs == 8:
            per_block.append(f"const f32x8 sx{r} = ds8 * *(const f32x8 *){xs};")
            if fmt.offset:
                per_block.append(f"o{r} += dm8 * *(const f32x8 *)({xs} + $B);")
        else:
            per_block.append(f"const f32x8 sx{r} = ds8[0] * {xs}[0];")
            if fmt.offset:
                per_block.append(f"o{r}[0] += dm8[0] * {xs}[$B];")
    avx2, portable = [], []
    for r in rows:
        xr = f"((long){r} * $K + b * 32)"
        avx2.append(
            f"a{r} += __builtin_convertvector((i32x8)("
            f"__builtin_ia32_pmaddwd256(wl, *(const v16hi *)(xq + {xr}))"
            f" + __builtin_ia32_pmaddwd256(wh, *(const v16hi *)(xq + {xr} + 16))), f32x8)"
            f" * sx{r}[j];"
        )
        portable.append(
            f"{{ int dot = 0; for (int i = 0; i < 32; i++) dot += {fmt.code} * xq[{xr} + i];"
            f" a{r}[0] += (float)dot * sx{r}[j]; }}"
        )
    sep = "\n        "
    per_sub = f"""
#if defined(__AVX2__) && !$PORTABLE
        {fmt.unpack_avx2}
        {sep.join(avx2)}
#else
        {sep.join(portable)}
#endif
      """
    stores = " ".join(f"STORE((long){r} * $N + n, HSUM8(a{r}) + HSUM8(o{r}));" for r in rows)
    return f"""  {{ {decl}
    {_superblocks(fmt, " ".join(per_block), per_sub)}
    {stores}
  }}"""
