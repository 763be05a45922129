"""C kernels that compute straight on GGML block bytes: Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K,
IQ4_NL, IQ4_XS.

The weights stay exactly as in the GGUF file (no repacked copy), so a node can
use them from the file's memory map. Each kernel walks a weight row
super-block by super-block: one K-quant block (256 values), or 8 blocks of a
32-value kind (one where rows are not a multiple of 256), split into sub-blocks
of 32 values that each meet one int16 activation block of
`cpu_kernels.QUANTIZE`:

    kind  sub-block j of 32 values decodes as       dot product per sub-block
    q5_0  d * (q - 16), q 5-bit                      ds * dx * sum((q - 16) qx)
    q5_1  d * q + m                                  ds * dx * sum(q qx) + m * dx sum(qx)
    q8_0  d * q, q int8                              ds * dx * sum(q qx)
    q4_k  d*sc[j] * q - dmin*mn[j], 6-bit sc, mn     likewise, ds = d*sc[j], dm = -dmin*mn[j]
    q5_k  as q4_k with a 5th bit from qh             likewise
    q6_k  d*sc[i/16] * (q - 32), int8 sc per 16      d * dx * sum((q - 32) sc qx)
    iq4_nl d * K[q], q 4-bit, K an int8 codebook      ds * dx * sum(K[q] qx)
    iq4_xs d*(ls[j] - 32) * K[q], 6-bit ls           likewise, ds = d * (ls[j] - 32)

Q6_K's int8 sub-scales are folded into the int16 weight codes (|(q-32) sc| <=
4096), so two pmaddwd results still fit an int32 lane next to |qx| <= 32767.
IQ4's codebook lookup is one `pshufb` per 16 nibbles with AVX2 (llama.cpp's
trick), a table read in plain C.

`matmul_source` is the per-row integer kernel for these layouts (decode);
`int_gemm_source` the integer GEMM of prefill chunks (int16 weight codes
decoded once per chunk into a panel, `vpdpwssd` / `pmaddwd` outer products
against int16 activations: about 1.4-1.5x the float32 GEMM here). `gemm_format`
turns a format into the `cpu_kernels.Format` that `cpu_kernels.gemm_source`
(the float32 GEMM) dequantizes with, exactly. F16 and BF16 matrices
(`FloatFormat`) always go through the float32 GEMM. Float16 fields are decoded
with F16C where the CPU has it, else with integer operations (both exact; no
inf or NaN scales expected).
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Template

from exoquic.engines.tinygrad import cpu_kernels
from exoquic.engines.tinygrad.cpu_kernels import GROUP_ROWS, Format
from exoquic.models.quant import IQ4_VALUES

# float16 at byte pointer q -> float (normal and subnormal values exactly).
_F16 = """
typedef unsigned char u8x8 __attribute__((ext_vector_type(8), aligned(1)));
#define F16(q) ({ const unsigned h_ = (unsigned)(q)[0] | ((unsigned)(q)[1] << 8); \\
  const unsigned e_ = (h_ >> 10) & 31, m_ = h_ & 1023; \\
  union { unsigned u; float f; } v_; v_.u = ((e_ + 112) << 23) | (m_ << 13); \\
  const float r_ = e_ ? v_.f : (float)m_ * 5.9604644775390625e-08f; (h_ & 0x8000) ? -r_ : r_; })
/* F16X8: the same for the float16 at byte offset OFF of 8 blocks of STRIDE bytes from q;
   both with F16C where the CPU has it */
typedef unsigned short u16u __attribute__((aligned(1)));
#define H16(q) (*(const u16u *)(q))
#if defined(__F16C__) && !$PORTABLE
typedef short h16x8 __attribute__((vector_size(16)));
#undef F16
#define F16(q) (__builtin_ia32_vcvtph2ps((h16x8){(short)H16(q), 0, 0, 0, 0, 0, 0, 0})[0])
#define F16X8(q, STRIDE, OFF) ({ const unsigned char *q_ = (q) + (OFF); \
  const h16x8 h_ = {H16(q_), H16(q_ + STRIDE), H16(q_ + 2 * STRIDE), H16(q_ + 3 * STRIDE), \
                    H16(q_ + 4 * STRIDE), H16(q_ + 5 * STRIDE), H16(q_ + 6 * STRIDE), \
                    H16(q_ + 7 * STRIDE)}; \
  (f32x8)__builtin_ia32_vcvtph2ps256(h_); })
#else
#define F16X8(q, STRIDE, OFF) ({ const unsigned char *q_ = (q) + (OFF); \
  const i32x8 h_ = {H16(q_), H16(q_ + STRIDE), H16(q_ + 2 * STRIDE), H16(q_ + 3 * STRIDE), \
                    H16(q_ + 4 * STRIDE), H16(q_ + 5 * STRIDE), H16(q_ + 6 * STRIDE), \
                    H16(q_ + 7 * STRIDE)}; \
  const i32x8 e_ = (h_ >> 10) & 31, m_ = h_ & 1023; \
  const f32x8 n_ = (f32x8)(((e_ + 112) << 23) | (m_ << 13)); \
  const f32x8 s_ = __builtin_convertvector(m_, f32x8) * 5.9604644775390625e-08f; \
  const f32x8 r_ = e_ != 0 ? n_ : s_; (h_ & 0x8000) != 0 ? -r_ : r_; })
#endif
"""


# IQ4_NL / IQ4_XS: a 4-bit index picks one of these int8 values (`quant.IQ4_VALUES`).
_IQ4 = (
    "static const signed char IQ4[16] = {"
    + ", ".join(str(v) for v in IQ4_VALUES)
    + "};\ntypedef char v16qi __attribute__((vector_size(16), aligned(1)));\n"
)
_PRELUDE = _F16 + _IQ4


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
    codes_avx2: str  # i16x16 codes `l` (values 0-15) and `h` (16-31) of sub-block j
    offset: bool
    # exact dequantization of value i of sub-block j: `dq_scale * dq_code (+ dm8[j])`
    dq_scale: str = "ds8[j]"
    dq_code: str = ""
    # from `l`, `h`: the dot product's int16 weights `wl`, `wh` (sub-scales folded in)
    fold_avx2: str = "v16hi wl = (v16hi)l, wh = (v16hi)h;"
    # scales of values 0-15 and 16-31 of sub-block j, for dequantizing `l`, `h`
    dq_scales_avx2: tuple[str, str] = ("ds8[j]", "ds8[j]")
    sub_prelude: str = ""  # C run before each sub-block's code

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

Q4_K = BlockFormat(
    kind="q4_k",
    values=256,
    nbytes=144,
    setup=_K_SCALES,
    code="((blk[16 + 32 * (j >> 1) + i] >> (4 * (j & 1))) & 15)",
    codes_avx2=_K_NIBBLES.replace("QS", "(blk + 16)"),
    offset=True,
)

Q5_K = BlockFormat(
    kind="q5_k",
    values=256,
    nbytes=176,
    setup=_K_SCALES,
    code="(((blk[48 + 32 * (j >> 1) + i] >> (4 * (j & 1))) & 15)"
    " | (((blk[16 + i] >> j) & 1) << 4))",
    codes_avx2=_K_NIBBLES.replace("QS", "(blk + 48)")
    + """
        i16x16 hl = __builtin_convertvector(*(const u8x16 *)(blk + 16), i16x16);
        i16x16 hh = __builtin_convertvector(*(const u8x16 *)(blk + 32), i16x16);
        l = l | (((hl >> (short)j) & (short)1) << 4);
        h = h | (((hh >> (short)j) & (short)1) << 4);""",
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
    codes_avx2="""const unsigned char *ql = blk + 64 * (j >> 2) + 32 * (j & 1);
        const unsigned char *qh = blk + 128 + 32 * (j >> 2);
        const short s4 = (short)(4 * ((j >> 1) & 1)), s2 = (short)(2 * (j & 3));
        const signed char *sc6 = (const signed char *)(blk + 192) + 2 * j;
        i16x16 l = __builtin_convertvector(*(const u8x16 *)ql, i16x16);
        i16x16 h = __builtin_convertvector(*(const u8x16 *)(ql + 16), i16x16);
        i16x16 hl = __builtin_convertvector(*(const u8x16 *)qh, i16x16);
        i16x16 hh = __builtin_convertvector(*(const u8x16 *)(qh + 16), i16x16);
        l = (((l >> s4) & (short)15) | (((hl >> s2) & (short)3) << 4)) - (short)32;
        h = (((h >> s4) & (short)15) | (((hh >> s2) & (short)3) << 4)) - (short)32;""",
    fold_avx2="v16hi wl = (v16hi)(l * (short)sc6[0]), wh = (v16hi)(h * (short)sc6[1]);",
    dq_scales_avx2=("(d * (float)sc6[0])", "(d * (float)sc6[1])"),
    offset=False,
    dq_scale=f"(d * (float){_Q6_SCALE})",
    dq_code=f"({_Q6} - 32)",
)


# The 32-value kinds go 8 blocks at a time where rows allow (one "super-block" of 256
# values, sub-block j = block j at `bj`), else one block at a time.
def _legacy(
    kind: str, nbytes: int, group: int, code: str, codes: str, offset: bool, qh: int = -1
) -> BlockFormat:
    if group == 8:
        setup = f"ds8 = F16X8(blk, {nbytes}, 0);"
        setup += f" dm8 = F16X8(blk, {nbytes}, 2);" if offset else ""
    else:
        setup = "ds8 = F16(blk);" + (" dm8 = F16(blk + 2);" if offset else "")
    sub = f"const unsigned char *bj = blk + j * {nbytes};"
    if qh >= 0:
        sub += f" unsigned qh; __builtin_memcpy(&qh, bj + {qh}, 4);"
    return BlockFormat(
        kind=kind,
        values=32 * group,
        nbytes=nbytes * group,
        setup=setup,
        code=code,
        codes_avx2=codes,
        offset=offset,
        sub_prelude=sub,
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
_Q8_AVX2 = """i16x16 l = __builtin_convertvector(*(const i8x16 *)(bj + 2), i16x16);
        i16x16 h = __builtin_convertvector(*(const i8x16 *)(bj + 18), i16x16);"""


def _q5_0(group: int) -> BlockFormat:
    code = "(" + _Q5_CODE.replace("QS", "(bj + 6)") + " - 16)"
    unpack = _Q5_AVX2.replace("QS", "(bj + 6)")
    unpack += "\n        l = l - (short)16; h = h - (short)16;"
    return _legacy("q5_0", 22, group, code, unpack, offset=False, qh=2)


def _q5_1(group: int) -> BlockFormat:
    unpack = _Q5_AVX2.replace("QS", "(bj + 8)")
    return _legacy("q5_1", 24, group, _Q5_CODE.replace("QS", "(bj + 8)"), unpack, True, qh=4)


def _q8_0(group: int) -> BlockFormat:
    code = "((const signed char *)(bj + 2))[i]"
    return _legacy("q8_0", 34, group, code, _Q8_AVX2, offset=False)


# IQ4 indices: value i of a 32-value (sub-)block at byte i % 16 of QS, nibble i / 16, like
# Q4_0's; `pshufb` looks 16 of them up in the codebook at once.
_IQ4_CODE = "IQ4[(QS[i & 15] >> (4 * (i >> 4))) & 15]"
_IQ4_AVX2 = """const v16qi q_ = *(const v16qi *)(QS), t_ = *(const v16qi *)IQ4;
        const v16qi lo_ = q_ & (char)15, hi_ = (v16qi)((u8x16)q_ >> (unsigned char)4);
        i16x16 l = __builtin_convertvector((i8x16)__builtin_ia32_pshufb128(t_, lo_), i16x16);
        i16x16 h = __builtin_convertvector((i8x16)__builtin_ia32_pshufb128(t_, hi_), i16x16);"""


def _iq4_nl(group: int) -> BlockFormat:
    code, unpack = (c.replace("QS", "(bj + 2)") for c in (_IQ4_CODE, _IQ4_AVX2))
    return _legacy("iq4_nl", 18, group, code, unpack, offset=False)


# IQ4_XS: f16 d | u16 scales_h | scales_l[4] | qs[128]. Sub-block j's 6-bit scale ls has
# its low 4 bits in nibble j % 2 of scales_l[j / 2] and its high 2 in bits 2j of scales_h;
# its indices are qs[16 j .. 16 j + 15].
IQ4_XS = BlockFormat(
    kind="iq4_xs",
    values=256,
    nbytes=136,
    setup="""const float d = F16(blk); const unsigned sh = H16(blk + 2);
      for (int j = 0; j < 8; j++) {
        const int ls = ((blk[4 + (j >> 1)] >> (4 * (j & 1))) & 15) | (((sh >> (2 * j)) & 3) << 4);
        ds8[j] = d * (float)(ls - 32);
      }""",
    code=_IQ4_CODE.replace("QS", "(blk + 8 + 16 * j)"),
    codes_avx2=_IQ4_AVX2.replace("QS", "(blk + 8 + 16 * j)"),
    offset=False,
)


@dataclass(frozen=True)
class FloatFormat:
    """16-bit float weights (F16, BF16): no integer codes, so every product, decode
    included, goes through the float32 GEMM (`cpu_kernels.gemm_source`)."""

    kind: str
    dequantize: str  # C writing the K floats of weight row `p` into `row`, exactly


# F16C converts 8 halves at once (exactly); elsewhere the F16 macro, one at a time.
F16 = FloatFormat(
    kind="f16",
    dequantize="""int k = 0;
#if defined(__F16C__) && !$PORTABLE
      typedef short h16x8 __attribute__((vector_size(16), aligned(2)));
      for (; k + 8 <= $K; k += 8)
        *(f32x8 *)(row + k) = (f32x8)__builtin_ia32_vcvtph2ps256(*(const h16x8 *)(p + 2 * k));
#endif
      for (; k < $K; k++) row[k] = F16(p + 2 * k);""",
)

# bfloat16 is the top half of a float32.
BF16 = FloatFormat(
    kind="bf16",
    dequantize="""typedef unsigned short u16x8 __attribute__((ext_vector_type(8), aligned(2)));
      int k = 0;
      for (; k + 8 <= $K; k += 8) {
        const i32x8 wide = __builtin_convertvector(*(const u16x8 *)(p + 2 * k), i32x8);
        *(f32x8 *)(row + k) = (f32x8)(wide << 16);
      }
      for (; k < $K; k++) {
        union { unsigned u; float f; } v;
        v.u = ((unsigned)p[2 * k] | ((unsigned)p[2 * k + 1] << 8)) << 16;
        row[k] = v.f;
      }""",
)

_K_FORMATS = {f.kind: f for f in (Q4_K, Q5_K, Q6_K, IQ4_XS)}
_LEGACY = {"q5_0": _q5_0, "q5_1": _q5_1, "q8_0": _q8_0, "iq4_nl": _iq4_nl}
_FLOAT = {f.kind: f for f in (F16, BF16)}
KINDS = frozenset(_K_FORMATS) | frozenset(_LEGACY) | frozenset(_FLOAT)
AnyFormat = BlockFormat | FloatFormat


def block_format(kind: str, cols: int) -> AnyFormat:
    """The format for rows of `cols` values of `kind` (32-value kinds in 8s where they fit)."""
    if kind in _K_FORMATS:
        return _K_FORMATS[kind]
    if kind in _FLOAT:
        return _FLOAT[kind]
    return _LEGACY[kind](8 if cols % 256 == 0 else 1)


def constants(fmt: AnyFormat, cols: int) -> dict[str, int | str]:
    """Shape constants of a weight row of `cols` values."""
    if isinstance(fmt, FloatFormat):
        return {"ROWBYTES": 2 * cols}
    return {"NSB": cols // fmt.values, "ROWBYTES": cols // fmt.values * fmt.nbytes}


def _superblocks(fmt: BlockFormat, per_block: str, per_sub: str) -> str:
    """C looping over the super-blocks of weight row `p`: `per_block` once each (after
    `setup`), then `per_sub` for each sub-block `j`, unrolled so `j` is a constant."""
    subs = "\n      ".join(
        f"{{ const int j = {j}, b = s * {fmt.subs} + {j}; (void)b; {fmt.sub_prelude} {per_sub} }}"
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


def gemm_format(fmt: AnyFormat) -> Format:
    """The `cpu_kernels.Format` whose `setup` and `dequantize` feed `gemm_source`.

    Dequantization is exact: the same float32 operations, in the same order, as
    `gguf.quants` (each product and sum its own statement, so nothing is fused).
    """
    setup = "const unsigned char *p = $P + (long)n * $ROWBYTES;"
    if isinstance(fmt, FloatFormat):
        return Format(
            setup, unpack_avx2="", dot_portable="", offset=False, dequantize=fmt.dequantize
        )
    code = fmt.dq_code or fmt.code
    offset = "v = v + dm8[j];" if fmt.offset else ""
    stores = []
    for k, (half, part) in enumerate([("l", "lo"), ("l", "hi"), ("h", "lo"), ("h", "hi")]):
        stores.append(
            f"{{ f32x8 v = __builtin_convertvector({half}.{part}, f32x8) * s{k // 2};"
            f" {offset} *(f32x8 *)(row + b * 32 + {8 * k}) = v; }}"
        )
    lo, hi = fmt.dq_scales_avx2
    body = f"""
#if defined(__AVX2__) && !$PORTABLE
        {fmt.codes_avx2}
        const f32x8 s0 = {lo}, s1 = {hi};
        {" ".join(stores)}
#else
        for (int i = 0; i < 32; i++) {{
          const float scale = {fmt.dq_scale};
          float v = scale * (float){code};
          {offset}
          row[b * 32 + i] = v;
        }}
#endif
      """
    return Format(
        setup=setup,
        unpack_avx2="",
        dot_portable="",
        offset=False,
        dequantize=_superblocks(fmt, "", body),
    )


def dequantize_source(fmt: AnyFormat) -> Template:
    """`$OUT (N, K)` float32 = the weights `$P` (N rows of K values), exactly."""
    g = gemm_format(fmt)
    return Template(
        _PRELUDE
        + f"""
float *out = $OUT;
for (int n = 0; n < $N; n++) {{
  {g.setup}
  float *row = out + (long)n * $K;
  {g.dequantize}
}}
"""
    )


def gemm_source(fmt: AnyFormat) -> Template:
    """`cpu_kernels.gemm_source` (prefill chunks) for weights in `fmt` blocks."""
    return Template(_PRELUDE + cpu_kernels.gemm_source(gemm_format(fmt)).template)


def small_gemm_source(fmt: FloatFormat) -> Template:
    """`cpu_kernels.small_gemm_source` (decode) for 16-bit float weights."""
    return Template(_PRELUDE + cpu_kernels.small_gemm_source(gemm_format(fmt)).template)


def matmul_source(fmt: BlockFormat, rows: int) -> Template:
    """`$OUT (R, N) = x (R, K) @ W.T` for `rows` int16 activation rows, W in `fmt` blocks.

    Rows go in groups of up to `GROUP_ROWS` that share each unpacked sub-block; each
    row has its own accumulators, so its arithmetic is the same in any group size.
    """
    groups = [list(range(r, min(r + GROUP_ROWS, rows))) for r in range(0, rows, GROUP_ROWS)]
    body = "\n".join(_group(fmt, g) for g in groups)
    return Template(
        _PRELUDE
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
        {fmt.codes_avx2}
        {fmt.fold_avx2}
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


# Columns per panel of the integer GEMM: two vectors of 8 int32 lanes.
INT_GEMM_COLS = 16


def int_gemm_source(fmt: BlockFormat) -> Template:
    """Prefill chunks, integer: `$OUT (R, N) = x (R, K) @ W.T` straight from the int16
    activations of `cpu_kernels.QUANTIZE` (the decode kernels' own), no float32 copy.

    `INT_GEMM_COLS` weight columns at a time are decoded once into an int16 panel, code
    pairs interleaved by column (int32 word `[b][kp][c]` = values 2 kp, 2 kp + 1 of
    sub-block b of column c), with each half sub-block's float scale (and offset) per
    column. Then per activation row and sub-block, a 32-bit pair of activation codes is
    broadcast against 8 columns' code pairs (`vpdpwssd` with AVX-512 VNNI or AVX-VNNI,
    else `pmaddwd` and an add): integer sums of a sub-block (a half for Q6_K, whose two
    halves have their own scales), then one float step per sub-block and column:
    `acc += sum * (dw * dx)` (and `+ dm * dx sum(qx)` for offsets). Every output's
    arithmetic depends on nothing but its row and column, so chunking changes nothing.
    Integer sums cannot overflow: at most 32 products of |code| <= 127 and |q| <= 32767.
    """
    lo, hi = fmt.dq_scales_avx2
    split = lo != hi
    g = INT_GEMM_COLS
    offset = f"dmw[b][col] = {'dm8[j]' if fmt.offset else '0.0f'};"
    pack = f"""
        {fmt.codes_avx2}
        const i32x8 wl32 = (i32x8)l, wh32 = (i32x8)h;
        for (int i = 0; i < 8; i++) {{
          panel[b][i][col] = wl32[i]; panel[b][8 + i][col] = wh32[i];
        }}
        dw[b][0][col] = {lo}; dw[b][1][col] = {hi}; {offset}"""
    code = fmt.dq_code or fmt.code
    plain = f"""
        short cv[32];
        for (int i = 0; i < 32; i++) cv[i] = (short){code};
        for (int i = 0; i < 16; i++)
          panel[b][i][col] = (int)(unsigned short)cv[2 * i] | ((int)cv[2 * i + 1] << 16);
        {{ const int i = 0; dw[b][0][col] = {fmt.dq_scale}; }}
        {{ const int i = 16; dw[b][1][col] = {fmt.dq_scale}; }}
        {offset}"""
    decode = f"""
#if defined(__AVX2__) && !$PORTABLE
{pack}
#else
{plain}
#endif
"""
    return Template(
        _PRELUDE
        + _INT_DOT
        + f"""
float *out = $OUT; const short *xq = $XQ; const float *xs = $XS;
const int k0 = 0, k1 = $K;  /* all of each row (`_superblocks`) */
$STORE_SETUP
int panel[$B][16][{g}] __attribute__((aligned(32)));
float dw[$B][2][{g}] __attribute__((aligned(32))), dmw[$B][{g}] __attribute__((aligned(32)));
const int n0 = (int)((long)$N * $TID / $THREADS), n1 = (int)((long)$N * ($TID + 1) / $THREADS);
for (int c0 = n0; c0 < n1; c0 += {g}) {{
  const int cols = n1 - c0 < {g} ? n1 - c0 : {g};
  for (int col = 0; col < {g}; col++) {{
    if (col >= cols) {{
      for (int b = 0; b < $B; b++) {{
        for (int i = 0; i < 16; i++) panel[b][i][col] = 0;
        dw[b][0][col] = dw[b][1][col] = dmw[b][col] = 0.0f;
      }}
      continue;
    }}
    const unsigned char *p = $P + (long)(c0 + col) * $ROWBYTES;
    {_superblocks(fmt, "", decode)}
  }}
  int r = 0;
  for (; r + 4 <= $R; r += 4) {_int_tile(4, split)}
  for (; r < $R; r++) {_int_tile(1, split)}
}}
"""
    )


def _int_tile(rows: int, split: bool) -> str:
    """Rows r..r+rows-1 by the panel's 16 columns (two vectors `v` of 8 lanes)."""
    rv = [(i, v) for i in range(rows) for v in (0, 1)]
    decl = " ".join(f"f32x8 f{i}_{v} = 0.0f;" for i, v in rv)
    halves = [(0, 8), (8, 16)] if split else [(0, 16)]
    steps = []
    for h, (a, b_) in enumerate(halves):
        zero = " ".join(f"i32x8 a{i}_{v} = 0;" for i, v in rv)
        avx2 = " ".join(
            f"{{ const i32x8 xb = XPAIR({i});"
            f" a{i}_0 = DOT(a{i}_0, w0, xb); a{i}_1 = DOT(a{i}_1, w1, xb); }}"
            for i in range(rows)
        )
        plain = " ".join(
            f"for (int l = 0; l < 8; l++) {{ const int xv = XPAIR({i});"
            f" a{i}_0[l] += PAIR(panel[b][kp][l], xv);"
            f" a{i}_1[l] += PAIR(panel[b][kp][8 + l], xv); }}"
            for i in range(rows)
        )
        scale = " ".join(
            f"f{i}_{v} += __builtin_convertvector(a{i}_{v}, f32x8)"
            f" * (*(const f32x8 *)&dw[b][{h}][{8 * v}] * xs[(long)(r + {i}) * 2 * $B + b]);"
            for i, v in rv
        )
        steps.append(f"""{{ {zero}
        for (int kp = {a}; kp < {b_}; kp++) {{
#if defined(__AVX2__) && !$PORTABLE
          const i32x8 w0 = *(const i32x8 *)&panel[b][kp][0], w1 = *(const i32x8 *)&panel[b][kp][8];
          {avx2}
#else
          {plain}
#endif
        }}
        {scale} }}""")
    offsets = " ".join(
        f"f{i}_{v} += *(const f32x8 *)&dmw[b][{8 * v}] * xs[(long)(r + {i}) * 2 * $B + $B + b];"
        for i, v in rv
    )
    stores = " ".join(
        f"for (int l = 0; l < 8 && {8 * v} + l < cols; l++)"
        f" STORE((long)(r + {i}) * $N + c0 + {8 * v} + l, f{i}_{v}[l]);"
        for i, v in rv
    )
    return f"""{{
      {decl}
      for (int b = 0; b < $B; b++) {{
        {" ".join(steps)}
        {offsets}
      }}
      {stores}
    }}"""


# The integer GEMM's multiply-add of 16 int16 pairs into 8 int32 lanes (VNNI where the CPU
# has it and $VNNI is 1), and one pair's.
_INT_DOT = """
#if ((defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)) && $VNNI
#define DOT(acc, w, x) ((i32x8)__builtin_ia32_vpdpwssd256((v8si)(acc), (v8si)(w), (v8si)(x)))
#else
#define DOT(acc, w, x) ((acc) + (i32x8)__builtin_ia32_pmaddwd256((v16hi)(w), (v16hi)(x)))
#endif
#define PAIR(w, x) ((int)(short)(w) * (int)(short)(x) + ((w) >> 16) * ((x) >> 16))
/* activation codes 2 kp, 2 kp + 1 of sub-block b of tile row I, as one int32 */
#define XPAIR(I) ({ int v_; \\
  __builtin_memcpy(&v_, xq + (long)(r + (I)) * $K + b * 32 + 2 * kp, 4); v_; })
"""
