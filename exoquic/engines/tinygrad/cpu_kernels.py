"""C kernels for quantized matrix products and attention on tinygrad's CPU device.

tinygrad's generated code for a fused dequantize-and-multiply runs several
times slower than hand-written loops on this kind of CPU, so the hot kernels
are written in C here and inserted into tinygrad graphs as custom kernels
(see `custom.py`); the small glue (residual adds, slices) stays tinygrad's.

The products are integer dot products, like llama.cpp's CPU scheme, but with
int16 instead of int8 activations: each activation row is first quantized in
blocks of 32 (`QUANTIZE`: `x ~ d * q`, |q| <= 32767, plus `d * sum(q)` per
block), then a weight block and an activation block meet in AVX2 `pmaddwd`,
scaled in float32:

    Q4 (w = s * c + m, c in 0..15):  s * dx * sum(c * qx) + m * dx * sum(qx)

(`ggml_kernels` applies the same scheme to the other GGML kinds, read in place.)

int8 activations (llama.cpp's choice) run ~1.2x faster here but move the
default model's logits by ~5% (they change its greedy answers); int16 keeps
them within ~1e-4 relative of float32 activations.

Below `GEMM_ROWS` rows (decode, batched decode) every output row is computed
by the same sequence of operations whatever the number of rows, so batching
changes nothing. From `GEMM_ROWS` rows on (prefill chunks), GGML block weights
go through the integer GEMM of `ggml_kernels.int_gemm_source` (the same int16
activations, 120-133 GFLOP/s-equivalent of one core here); Q4_0/Q4_1 and 16-bit
float weights have those activations dequantized to float32 and multiplied in a
register-tiled float32 GEMM (`gemm_source`: weights broadcast against 8-row
activation vectors, 65-89 GFLOP/s). Both agree with the dot products up to
float32 rounding.

Kernel sources are `string.Template`s over the shape constants; `$OUT`,
`$X`... name the buffer arguments and `$TID`, `$THREADS` the thread split
(work is split by output column: thread t computes columns `N*t/T..N*(t+1)/T`).
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Template

BLOCK = 32

_TYPES = """
typedef float f32x8 __attribute__((ext_vector_type(8), aligned(4)));
typedef int i32x8 __attribute__((ext_vector_type(8)));
typedef unsigned char u8x16 __attribute__((ext_vector_type(16), aligned(1)));
typedef char v32qi __attribute__((vector_size(32), aligned(1)));
typedef short v16hi __attribute__((vector_size(32), aligned(2)));
typedef int v8si __attribute__((vector_size(32)));
typedef signed char v32qs __attribute__((vector_size(32)));
typedef short i16x16 __attribute__((ext_vector_type(16), aligned(2)));
typedef signed char i8x16 __attribute__((ext_vector_type(16), aligned(1)));
typedef signed char i8x8 __attribute__((ext_vector_type(8), aligned(1)));
/* the sum of an 8-lane vector, in one fixed order */
#define HSUM8(a) ((((a)[0] + (a)[1]) + ((a)[2] + (a)[3])) + (((a)[4] + (a)[5]) + ((a)[6] + (a)[7])))
"""

# exp(x) for x <= 0 on 8 lanes: 2^(x log2 e) split into 2^n (exponent bits) times a
# degree-6 polynomial for 2^f, f in [-0.5, 0.5] (relative error ~2e-7). freestanding
# C has no libm, and this vectorizes.
_EXP8 = """
      f32x8 z = xv * 1.44269504088896341f;
      z = z < -126.0f ? -126.0f : z;
      f32x8 n = (z + 12582912.0f) - 12582912.0f;
      f32x8 f = z - n;
      f32x8 pw = 1.535336188319500e-4f;
      pw = pw * f + 1.339887440266574e-3f;
      pw = pw * f + 9.618437357674640e-3f;
      pw = pw * f + 5.550332471162809e-2f;
      pw = pw * f + 2.402264791363012e-1f;
      pw = pw * f + 6.931472028550421e-1f;
      pw = pw * f + 1.0f;
      i32x8 bits = (__builtin_convertvector(n, i32x8) + 127) << 23;
      f32x8 ev = pw * (f32x8)bits;
"""

_QUANTIZE = """
/* x (R, K) float -> xq (R, K) int16 and xs (R, 2, K/32): per block d, then d * sum(q),
   after an optional prologue on each row ($PROLOGUE_NAME). */
short *xq = $XQ; float *xs = $XS;
for (int r = 0; r < $R; r++) {
  float vals[$K] __attribute__((aligned(32)));
  $PROLOGUE
  for (int b = 0; b < $B; b++) {
    const float *v = vals + b * 32;
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) { float a = __builtin_fabsf(v[j]); amax = a > amax ? a : amax; }
    float d = amax / 32767.0f, id = amax > 0.0f ? 32767.0f / amax : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; j++) {
      /* round half to even (the float trick is exact for |t| < 2^22) */
      float t = v[j] * id;
      int q = (int)((t + 12582912.0f) - 12582912.0f);
      xq[(long)r * $K + b * 32 + j] = (short)q;
      sum += q;
    }
    xs[(long)r * 2 * $B + b] = d;
    xs[(long)r * 2 * $B + $B + b] = d * (float)sum;
  }
}
"""

# Prologues fill `vals` (K floats) for row r.
_COPY = """const float *x = $X + (long)r * $K;
  for (int j = 0; j < $K; j++) vals[j] = x[j];"""

# RMS norm: vals = x / sqrt(mean(x^2) + eps) * w
_RMS_NORM = """const float *x = $X + (long)r * $K; const float *w = $W;
  f32x8 ss = 0.0f;
  for (int j = 0; j < $K; j += 8) { f32x8 v = *(const f32x8 *)(x + j); ss += v * v; }
  float inv = 1.0f / __builtin_sqrtf(HSUM8(ss) / $K + $EPS);
  for (int j = 0; j < $K; j++) vals[j] = x[j] * inv * w[j];"""

# Gated MLP: x (R, 2K) = gate | up -> vals = gate * sigmoid($SIGMOID_ARG) * up. With the
# argument g that is SwiGLU (silu(g) = g sigmoid(g)); GeGLU's tanh approximation is
# the same form, since 0.5 (1 + tanh(a)) = sigmoid(2a).
_GATED = """const float *x = $X + (long)r * 2 * $K;
  for (int j = 0; j < $K; j += 8) {
    f32x8 g = *(const f32x8 *)(x + j), u = *(const f32x8 *)(x + $K + j);
    f32x8 xv = -($SIGMOID_ARG);
    xv = xv > 80.0f ? 80.0f : xv;
$EXP8
    *(f32x8 *)(vals + j) = g / (1.0f + ev) * u;
  }"""

QUANTIZE = Template(Template(_QUANTIZE).safe_substitute(PROLOGUE=_COPY, PROLOGUE_NAME="none"))
NORM_QUANTIZE = Template(
    Template(_QUANTIZE).safe_substitute(PROLOGUE=_RMS_NORM, PROLOGUE_NAME="RMS norm with weight W")
)
# gelu_tanh(g) = g sigmoid(2 sqrt(2 / pi) (g + 0.044715 g^3)) (Gemma's "gelu_pytorch_tanh")
_GELU_TANH_ARG = "1.5957691216057308f * (g + 0.044715f * g * g * g)"


def _gated_quantize(sigmoid_arg: str, name: str) -> Template:
    prologue = _GATED.replace("$EXP8", _EXP8).replace("$SIGMOID_ARG", sigmoid_arg)
    return Template(Template(_QUANTIZE).safe_substitute(PROLOGUE=prologue, PROLOGUE_NAME=name))


SWIGLU_QUANTIZE = _gated_quantize("g", "silu(gate) * up of X (R, 2K)")
GEGLU_QUANTIZE = _gated_quantize(_GELU_TANH_ARG, "gelu_tanh(gate) * up of X (R, 2K)")


# Rows are processed in groups of up to 4 that share each unpacked weight block.
# The C for a group is generated unrolled so the accumulators stay in registers;
# each row has one accumulator, so its arithmetic is the same in every group size.
GROUP_ROWS = 4


@dataclass(frozen=True)
class Format:
    setup: str  # per output column n: pointers to its weights
    unpack_avx2: str  # per block b: int16 codes `wl` (values 0-15) and `wh` (16-31)
    dot_portable: str  # `dot += ...` for block b and activation row `XR`
    offset: bool  # add sum over blocks of m[b] * d * sum(qx) (weights with offsets)
    dequantize: str  # writes the float32 weights of column n into `row` (K floats)


Q4 = Format(
    setup="const unsigned char *p = $P + (long)n * $B * 16;"
    " const float *s = $S + (long)n * $B, *m = $M + (long)n * $B;",
    # codes 0..15 widened to int16: values 0-15 (low nibbles), 16-31 (high nibbles)
    unpack_avx2="""i16x16 both = __builtin_convertvector(*(const u8x16 *)(p + b * 16), i16x16);
      v16hi wl = (v16hi)(both & (short)15), wh = (v16hi)(both >> (short)4);""",
    dot_portable="for (int j = 0; j < 16; j++) dot += (p[b * 16 + j] & 15) * xq[XR + j]"
    " + (p[b * 16 + j] >> 4) * xq[XR + 16 + j];",
    offset=True,
    dequantize="""for (int b = 0; b < $B; b++) {
        u8x16 q = *(const u8x16 *)(p + b * 16);
        u8x16 lo = q & (unsigned char)15, hi = q >> (unsigned char)4;
        f32x8 sv = s[b], mv = m[b];
        *(f32x8 *)(row + b * 32) = __builtin_convertvector(lo.lo, f32x8) * sv + mv;
        *(f32x8 *)(row + b * 32 + 8) = __builtin_convertvector(lo.hi, f32x8) * sv + mv;
        *(f32x8 *)(row + b * 32 + 16) = __builtin_convertvector(hi.lo, f32x8) * sv + mv;
        *(f32x8 *)(row + b * 32 + 24) = __builtin_convertvector(hi.hi, f32x8) * sv + mv;
      }""",
)


def matmul_source(fmt: Format, rows: int) -> Template:
    """The kernel for `rows` activation rows: `$OUT (R, N) = x (R, K) @ W.T`."""
    groups = [list(range(r, min(r + GROUP_ROWS, rows))) for r in range(0, rows, GROUP_ROWS)]
    body = "\n".join(_group(fmt, g) for g in groups)
    return Template(
        f"""
/* out (R, N) = x (R, K) @ W.T for weights in 32-value blocks (see the module docstring). */
float *out = $OUT; const short *xq = $XQ; const float *xs = $XS;
$STORE_SETUP
const int n0 = (int)((long)$N * $TID / $THREADS), n1 = (int)((long)$N * ($TID + 1) / $THREADS);
for (int n = n0; n < n1; n++) {{
  {fmt.setup}
{body}
}}
"""
    )


def _group(fmt: Format, rows: list[int]) -> str:
    decl = " ".join(f"f32x8 a{r} = 0.0f;" for r in rows)
    sep = "\n    "
    finish = []
    for r in rows:
        offset = ""
        if fmt.offset:
            # the offsets' share, vectorized over blocks: sum_b m[b] * d * sum(qx)
            offset = f"""f32x8 o = 0.0f; int c = 0;
      const float *dsum = xs + (long){r} * 2 * $B + $B;
      for (; c + 8 <= $B; c += 8) o += *(const f32x8 *)(m + c) * *(const f32x8 *)(dsum + c);
      for (; c < $B; c++) o[0] += m[c] * dsum[c];
      a += o;"""
        finish.append(
            f"""{{ f32x8 a = a{r};
      {offset}
      STORE((long){r} * $N + n, HSUM8(a)); }}"""
        )
    return f"""  {{ {decl}
    for (int b = 0; b < $B; b++) {_block(fmt, rows)}
    {sep.join(finish)}
  }}"""


def _block(fmt: Format, rows: list[int]) -> str:
    """Accumulate weight block `b` times each row's activation block into `a{row}`."""
    avx2, portable = [], []
    for r in rows:
        xr = f"((long){r} * $K + b * 32)"
        scale = f"(s[b] * xs[(long){r} * 2 * $B + b])"
        avx2.append(
            f"a{r} += __builtin_convertvector((i32x8)("
            f"__builtin_ia32_pmaddwd256(wl, *(const v16hi *)(xq + {xr}))"
            f" + __builtin_ia32_pmaddwd256(wh, *(const v16hi *)(xq + {xr} + 16))), f32x8)"
            f" * {scale};"
        )
        portable.append(
            f"{{ int dot = 0; {fmt.dot_portable.replace('XR', xr)}"
            f" a{r}[0] += (float)dot * {scale}; }}"
        )
    sep = "\n        "
    return f"""{{
#if defined(__AVX2__) && !$PORTABLE
        {fmt.unpack_avx2}
        {sep.join(avx2)}
#else
        {sep.join(portable)}
#endif
      }}"""


# Rows from which `matmul` uses the float32 GEMM below instead of per-row dot products.
GEMM_ROWS = 16
_PANEL = 8  # weight columns dequantized at a time (`small_gemm_source`)
# The prefill GEMM's register tile: GEMM_VECTORS vectors of 8 rows by GEMM_COLS columns.
GEMM_VECTORS = 4
GEMM_COLS = 6
# Each output sums GEMM_SPAN products at a time, then adds that to its total: rounding
# errors grow with the span and the number of spans, not with K.
GEMM_SPAN = 32


def gemm_padded_rows(rows: int) -> int:
    """The rows of `DEQUANTIZE_ROWS_T`'s output: `rows` padded to whole register tiles."""
    tile = 8 * GEMM_VECTORS
    return -(-rows // tile) * tile


DEQUANTIZE_ROWS_T = Template(
    """
/* xq (R, K) int16 with xs (R, 2, K/32) -> xt (K, RP) float32 = d * q, transposed, the
   padding rows R..RP-1 zero: the GEMM loads 8 consecutive rows of one column at once. */
const short *xq = $XQ; const float *xs = $XS; float *xt = $XT;
for (long r = 0; r < $R; r++) for (int b = 0; b < $B; b++) {
  const float d = xs[r * 2 * $B + b];
  for (int j = 0; j < 32; j++)
    xt[(long)(b * 32 + j) * $RP + r] = d * (float)xq[r * $K + b * 32 + j];
}
for (long k = 0; k < $K; k++) for (long r = $R; r < $RP; r++) xt[k * $RP + r] = 0.0f;
"""
)


def gemm_source(fmt: Format) -> Template:
    """Prefill chunks: `$OUT (R, N) = x (R, K) @ W.T` with float32 activations given
    transposed, `$XT (K, RP)` (from `DEQUANTIZE_ROWS_T`, the same values the per-row
    kernel sees). `GEMM_COLS` weight columns at a time are dequantized into a panel, then
    multiplied into register tiles of `8 * GEMM_VECTORS` rows by `GEMM_COLS` columns: per
    k, each weight is broadcast against vectors of 8 rows' activations (an outer
    product), so every value loaded feeds several FMAs and nothing is summed across
    lanes. Each output sums its products in the same order (spans of `GEMM_SPAN`),
    whatever its tile, so a row's result does not depend on the chunk around it."""
    return Template(
        f"""
float *out = $OUT; const float *xt = $XT;
$STORE_SETUP
float panel[{GEMM_COLS}][$K] __attribute__((aligned(32)));
const int n0 = (int)((long)$N * $TID / $THREADS), n1 = (int)((long)$N * ($TID + 1) / $THREADS);
for (int c0 = n0; c0 < n1; c0 += {GEMM_COLS}) {{
  const int cols = n1 - c0 < {GEMM_COLS} ? n1 - c0 : {GEMM_COLS};
  for (int j = 0; j < cols; j++) {{
    const int n = c0 + j;
    float *row = panel[j];
    {fmt.setup}
    {fmt.dequantize}
  }}
  if (cols == {GEMM_COLS}) {{
    for (int r = 0; r < $RP; r += {8 * GEMM_VECTORS}) {_outer_tile(GEMM_COLS, "0")}
  }} else {{
    for (int j = 0; j < cols; j++)
      for (int r = 0; r < $RP; r += {8 * GEMM_VECTORS}) {_outer_tile(1, "j")}
  }}
}}
"""
    )


def _outer_tile(cols: int, first: str) -> str:
    """Rows r.. (GEMM_VECTORS vectors of 8) by panel columns first..first+cols-1."""
    vecs = range(GEMM_VECTORS)
    acc = [[f"a{c}_{v}" for v in vecs] for c in range(cols)]
    decl = "f32x8 " + ", ".join(f"{a} = 0.0f, t{a} = 0.0f" for line in acc for a in line) + ";"
    flush = " ".join(f"t{a} += {a}; {a} = 0.0f;" for line in acc for a in line)
    loads = " ".join(f"const f32x8 x{v} = *(const f32x8 *)(xk + {8 * v});" for v in vecs)
    fmas = " ".join(
        f"{{ const f32x8 w = panel[{first} + {c}][k];"
        + " ".join(f" {acc[c][v]} += w * x{v};" for v in vecs)
        + " }"
        for c in range(cols)
    )
    stores = " ".join(
        f"for (int l = 0; l < 8 && r + {8 * v} + l < $R; l++)"
        f" STORE((long)(r + {8 * v} + l) * $N + c0 + {first} + {c}, t{acc[c][v]}[l]);"
        for c in range(cols)
        for v in vecs
    )
    return f"""{{
      {decl}
      const float *xk = xt + r;
      for (int k0 = 0; k0 < $K; k0 += {GEMM_SPAN}) {{
        const int k1 = k0 + {GEMM_SPAN} < $K ? k0 + {GEMM_SPAN} : $K;
        for (int k = k0; k < k1; k++, xk += $RP) {{ {loads} {fmas} }}
        {flush}
      }}
      {stores}
    }}"""


DEQUANTIZE_ROWS = Template(
    """
/* xq (R, K) int16 with xs (R, 2, K/32) -> x (R, K) float32 = d * q */
const short *xq = $XQ; const float *xs = $XS; float *x = $X;
for (long r = 0; r < $R; r++) for (int b = 0; b < $B; b++) {
  const float d = xs[r * 2 * $B + b];
  for (int j = 0; j < 32; j++) x[r * $K + b * 32 + j] = d * (float)xq[r * $K + b * 32 + j];
}
"""
)


def small_gemm_source(fmt: Format) -> Template:
    """16-bit float weights below `GEMM_ROWS` rows (decode), which have no integer
    kernel: `$OUT (R, N) = x (R, K) @ W.T` with float32 activations `$XF` (from
    `DEQUANTIZE_ROWS`): weight columns are dequantized 8 at a time, then multiplied in
    register tiles of 4 rows x 2 columns (no padding of the rows to whole tiles)."""
    tile4 = _tile(4, 2)
    tile1 = _tile(1, 2)
    return Template(
        f"""
float *out = $OUT; const float *x = $XF;
$STORE_SETUP
float panel[{_PANEL}][$K] __attribute__((aligned(32)));
const int n0 = (int)((long)$N * $TID / $THREADS), n1 = (int)((long)$N * ($TID + 1) / $THREADS);
for (int c0 = n0; c0 < n1; c0 += {_PANEL}) {{
  const int cols = n1 - c0 < {_PANEL} ? n1 - c0 : {_PANEL};
  for (int j = 0; j < cols; j++) {{
    const int n = c0 + j;
    float *row = panel[j];
    {fmt.setup}
    {fmt.dequantize}
  }}
  int j = 0;
  for (; j + 2 <= cols; j += 2) {{
    int r = 0;
    for (; r + 4 <= $R; r += 4) {tile4}
    for (; r < $R; r++) {tile1}
  }}
  for (; j < cols; j++) for (int r = 0; r < $R; r++) {{
    f32x8 a = 0.0f;
    for (int k = 0; k < $K; k += 8)
      a += *(const f32x8 *)(x + (long)r * $K + k) * *(const f32x8 *)(panel[j] + k);
    STORE((long)r * $N + c0 + j, HSUM8(a));
  }}
}}
"""
    )


def _tile(rows: int, cols: int) -> str:
    """`rows` x `cols` outputs at (r, c0 + j): one accumulator vector each."""
    acc = [[f"a{i}{c}" for c in range(cols)] for i in range(rows)]
    decl = "f32x8 " + ", ".join(f"{a} = 0.0f" for line in acc for a in line) + ";"
    loads = (
        " ".join(f"f32x8 w{c} = *(const f32x8 *)(panel[j + {c}] + k);" for c in range(cols))
        + " "
        + " ".join(
            f"f32x8 x{i} = *(const f32x8 *)(x + (long)(r + {i}) * $K + k);" for i in range(rows)
        )
    )
    fmas = " ".join(f"{acc[i][c]} += x{i} * w{c};" for i in range(rows) for c in range(cols))
    stores = " ".join(
        f"STORE((long)(r + {i}) * $N + c0 + j + {c}, HSUM8({acc[i][c]}));"
        for i in range(rows)
        for c in range(cols)
    )
    return f"""{{
      {decl}
      for (int k = 0; k < $K; k += 8) {{ {loads} {fmas} }}
      {stores}
    }}"""


# Matmul outputs go through STORE: plain, or plus a residual `$RES` of the output's shape.
PLAIN_STORE = "#define STORE(i, v) (out[i] = (v))"
RESIDUAL_STORE = "const float *res = $RES;\n#define STORE(i, v) (out[i] = (v) + res[i])"


def source(template: Template, **constants: int | str) -> str:
    """The C statements of a kernel with its shape constants filled in (buffer names stay `$X`).

    PORTABLE=1 skips the AVX2 code even where the CPU has it (to test the plain C).
    """
    values = {"PORTABLE": "0"} | {k: str(v) for k, v in constants.items()}
    return _TYPES + template.safe_substitute(values)


ROPE_STORE = Template(
    """
/* Rotate q and k of T new rows (half-split RoPE), scale q, write k and v into the cache.
   qkv (T, (H + 2 KV) hd); rope (T, hd) = cos | sin of each row's position;
   cache (2, KV, C, hd) at positions start..start+T-1, keys in blocks of 8 positions
   stored dimension-major ([KV][C / 8][hd][8]), values row-major; q out (T, H, hd). */
const float *qkv = $QKV; const float *rope = $ROPE; float *cache = $CACHE; float *qout = $QOUT;
const long start = $START;
for (int t = 0; t < $T; t++) {
  const float *row = qkv + (long)t * ($H + 2 * $KV) * $HD;
  const float *cs = rope + (long)t * $HD, *sn = cs + $HD / 2;
  const long pos = start + t;
  for (int h = 0; h < $H + $KV; h++) {
    const float *x = row + (long)h * $HD;
    /* q rows are contiguous; a key lands at [g][pos / 8][i][pos % 8] (see ATTEND) */
    float *dst = h < $H ? qout + ((long)t * $H + h) * $HD
                        : cache + ((long)(h - $H) * $C + (pos & ~7L)) * $HD + (pos & 7);
    const long step = h < $H ? 1 : 8;
    const float scale = h < $H ? $SCALE : 1.0f;
    for (int i = 0; i < $HD / 2; i++) {
      float a = x[i], b = x[i + $HD / 2];
      dst[i * step] = (a * cs[i] - b * sn[i]) * scale;
      dst[(i + $HD / 2) * step] = (b * cs[i] + a * sn[i]) * scale;
    }
  }
  for (int g = 0; g < $KV; g++) {
    const float *x = row + (long)($H + $KV + g) * $HD;
    float *dst = cache + ((long)($KV + g) * $C + start + t) * $HD;
    for (int i = 0; i < $HD; i++) dst[i] = x[i];
  }
}
"""
)

_ATTEND = """
/* Causal attention: query row t (position start + t) of head h reads cache rows 0..start+t
   of kv head g = h / G (G = H / KV query heads share it). q (T, H, hd) already rotated and
   scaled; out (T, H * hd). Each (t, g) pair handles its G heads together, so every key and
   value row is read from memory once per group (the cache is as big as the weights at long
   contexts). Keys are stored in blocks of 8 positions, dimension-major (see ROPE_STORE).
   Threads split the (t, g) pairs. Every query's arithmetic (key order, sums) depends
   only on its position, never on T or the thread split.
   WINDOW > 0: the query reads only its last WINDOW positions (sliding-window layers);
   SOFTCAP > 0: scores become SOFTCAP * tanh(score / SOFTCAP) (Gemma 2). */
#define G ($H / $KV)
#define PV_BLOCK 64
_Static_assert($C % 8 == 0, "the cache holds whole blocks of 8 positions");
const float *qin = $Q; const float *cache = $CACHE; float *out = $OUT;
const long start = $START;
float scores[G][$C + 8] __attribute__((aligned(32)));
const int p0 = (int)((long)$T * $KV * $TID / $THREADS);
const int p1 = (int)((long)$T * $KV * ($TID + 1) / $THREADS);
for (int pair = p0; pair < p1; pair++) {
  const int t = pair / $KV, g = pair % $KV;
  const float *K = cache + (long)g * $C * $HD, *V = cache + (long)($KV + g) * $C * $HD;
  const int S = (int)start + t + 1;
  /* keys lo..S-1 are read; lo8 rounds down to a key block, its lanes below lo are dropped */
  const int lo = $WINDOW > 0 && S > $WINDOW ? S - $WINDOW : 0, lo8 = lo & ~7;
  float mx[G];
  /* scores, 8 keys at a time from a dimension-major key block: no horizontal sums. The
     last block may run past S; those lanes are dropped below. */
  f32x8 mxv[G];
  for (int hh = 0; hh < G; hh++) { mx[hh] = -3.0e38f; mxv[hh] = -3.0e38f; }
  for (int j = lo8; j < S; j += 8) {
    const float *kb = K + (long)j * $HD;
    for (int hh = 0; hh < G; hh++) {
      const float *q = qin + ((long)t * $H + g * G + hh) * $HD;
      f32x8 a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
      for (int i = 0; i < $HD; i += 4) {
        a0 += q[i] * *(const f32x8 *)(kb + 8 * i);
        a1 += q[i + 1] * *(const f32x8 *)(kb + 8 * (i + 1));
        a2 += q[i + 2] * *(const f32x8 *)(kb + 8 * (i + 2));
        a3 += q[i + 3] * *(const f32x8 *)(kb + 8 * (i + 3));
      }
      f32x8 sv = (a0 + a1) + (a2 + a3);
$SOFTCAP_CODE
      *(f32x8 *)(scores[hh] + j) = sv;
      if (j + 8 <= S && j >= lo) mxv[hh] = sv > mxv[hh] ? sv : mxv[hh];
      else for (int l = lo > j ? lo - j : 0; l < 8 && j + l < S; l++)
        mx[hh] = sv[l] > mx[hh] ? sv[l] : mx[hh];
    }
  }
  for (int hh = 0; hh < G; hh++)
    for (int l = 0; l < 8; l++) mx[hh] = mxv[hh][l] > mx[hh] ? mxv[hh][l] : mx[hh];
  /* softmax numerators in place, and each head's 1 / denominator */
  float inv[G];
  for (int hh = 0; hh < G; hh++) {
    float *sc = scores[hh];
    for (int jj = lo8; jj < lo; jj++) sc[jj] = -3.0e38f;
    for (int jj = S; jj < ((S + 7) & ~7); jj++) sc[jj] = -3.0e38f;
    f32x8 total = 0.0f;
    for (int jj = lo8; jj < S; jj += 8) {
      f32x8 xv = *(f32x8 *)(sc + jj) - mx[hh];
$EXP8
      *(f32x8 *)(sc + jj) = ev;
      total += ev;
    }
    inv[hh] = 1.0f / HSUM8(total);
  }
  /* weighted values, in blocks of keys that stay in cache while every head of the group
     reads them (each head still sums its keys in order 0..S-1) */
  f32x8 o[G][$HD / 8];
  for (int hh = 0; hh < G; hh++) for (int i = 0; i < $HD / 8; i++) o[hh][i] = 0.0f;
  for (int jb = lo; jb < S; jb += PV_BLOCK) {
    const int je = S - jb < PV_BLOCK ? S : jb + PV_BLOCK;
    for (int hh = 0; hh < G; hh++) {
      f32x8 acc[$HD / 8];
      for (int i = 0; i < $HD / 8; i++) acc[i] = o[hh][i];
      for (int jj = jb; jj < je; jj++) {
        const float *v = V + (long)jj * $HD;
        const float p = scores[hh][jj];
        for (int i = 0; i < $HD / 8; i++) acc[i] += p * *(const f32x8 *)(v + 8 * i);
      }
      for (int i = 0; i < $HD / 8; i++) o[hh][i] = acc[i];
    }
  }
  for (int hh = 0; hh < G; hh++) {
    float *dst = out + ((long)t * $H + g * G + hh) * $HD;
    for (int i = 0; i < $HD / 8; i++) *(f32x8 *)(dst + 8 * i) = o[hh][i] * inv[hh];
  }
}
#undef G
#undef PV_BLOCK
""".replace("$EXP8", _EXP8)

# SOFTCAP * tanh(sv / SOFTCAP) on 8 lanes, with tanh|y| = (1 - e) / (1 + e), e = exp(-2|y|).
_SOFTCAP = """      {
        f32x8 y = sv * (1.0f / $SOFTCAP), ay = y < 0.0f ? -y : y;
        f32x8 xv = -2.0f * ay;
$EXP8
        f32x8 th = (1.0f - ev) / (1.0f + ev);
        sv = (y < 0.0f ? -th : th) * $SOFTCAP;
      }""".replace("$EXP8", _EXP8)


def attend_source(softcap: float | None) -> Template:
    """The attention kernel, with soft-capped scores when `softcap` is set ($SOFTCAP)."""
    return Template(_ATTEND.replace("$SOFTCAP_CODE", _SOFTCAP if softcap else ""))


ATTEND = attend_source(None)
