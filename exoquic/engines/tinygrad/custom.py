"""The C kernels of `cpu_kernels` as tinygrad operations (custom kernels in the lazy graph).

Each call adds one kernel to the graph: tinygrad schedules it, the JIT
captures it and the memory planner places its buffers like any other kernel;
only its body is C written by hand instead of generated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from string import Template

from tinygrad import Tensor, dtypes
from tinygrad.uop.ops import KernelInfo, Ops, UOp

from exoquic.engines.tinygrad import cpu_kernels, ggml_kernels
from exoquic.engines.tinygrad.device import DEVICE
from exoquic.engines.tinygrad.matrices import BlockMatrix, OffsetMatrix, Q4Matrix

BLOCK = cpu_kernels.BLOCK
# Tests set this to run the plain C branches instead of the AVX2 ones.
PORTABLE_C = False
# Prefill chunks of GGML block weights: the integer GEMM (`ggml_kernels.int_gemm_source`)
# instead of dequantizing to float32 (`cpu_kernels.gemm_source`).
INT_GEMM = True
# Tests set this to run its AVX2 `pmaddwd` branch where the CPU has VNNI.
VNNI = True


def threads() -> int:
    """How many slices the threaded kernels are cut into: the CPUs this process may use.

    The slices run on however many threads the dispatcher is given (`runner`);
    tinygrad itself, before a step is flattened, runs them one after another.
    """
    from exoquic.engines.tinygrad.runner import usable_cpus

    return min(usable_cpus(), 8)


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """x `(R, K)` float32 -> int16 codes `(R, K)` and per-block `d`, `d * sum` `(R, 2, K/32)`."""
    return _quantize("quantize", cpu_kernels.QUANTIZE, x, [], int(x.shape[1]))


def norm_quantize_rows(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """`quantize_rows(rms_norm(x) * weight)` in one kernel."""
    name = f"norm_quantize_{eps!r}".replace(".", "_").replace("-", "m")
    constants = {"EPS": f"{eps!r}f"}
    return _quantize(name, cpu_kernels.NORM_QUANTIZE, x, [weight], int(x.shape[1]), constants)


def swiglu_quantize_rows(gate_up: Tensor) -> tuple[Tensor, Tensor]:
    """`quantize_rows(silu(gate) * up)` in one kernel, for gate_up `(R, 2F)` = gate | up."""
    return gated_quantize_rows(gate_up, "silu")


GATED_KERNELS = {"silu": cpu_kernels.SWIGLU_QUANTIZE, "gelu_tanh": cpu_kernels.GEGLU_QUANTIZE}


def gated_quantize_rows(gate_up: Tensor, activation: str) -> tuple[Tensor, Tensor]:
    """`quantize_rows(act(gate) * up)` in one kernel; act is "silu" or "gelu_tanh"."""
    cols = int(gate_up.shape[1]) // 2
    name = "swiglu_quantize" if activation == "silu" else f"{activation}_gated_quantize"
    return _quantize(name, GATED_KERNELS[activation], gate_up, [], cols)


def _quantize(
    name: str,
    template: Template,
    x: Tensor,
    extra: list[Tensor],
    cols: int,
    constants: dict[str, str] | None = None,
) -> tuple[Tensor, Tensor]:
    rows = int(x.shape[0])
    codes = Tensor.empty(rows, cols, dtype=dtypes.int16, device=DEVICE)
    sums = Tensor.empty(rows, 2, cols // BLOCK, dtype=dtypes.float32, device=DEVICE)
    code = cpu_kernels.source(template, R=rows, K=cols, B=cols // BLOCK, **(constants or {}))
    params = ["XQ", "XS", "X", "W"][: 3 + len(extra)]
    codes, sums, *_ = codes.custom_kernel(
        sums, x.contiguous(), *extra, fxn=_kernel(f"{name}_{rows}_{cols}", code, params)
    )
    return codes, sums


QuantizedMatrix = Q4Matrix | BlockMatrix | OffsetMatrix


def quantized_matmul(
    codes: Tensor, sums: Tensor, w: QuantizedMatrix, residual: Tensor | None = None
) -> Tensor:
    """`x @ w.T (+ residual)` `(R, N)` for x given as `quantize_rows(x)`."""
    if isinstance(w, OffsetMatrix):
        return quantized_matmul(codes, sums, w.codes, residual) + _offsets(sums, w)
    fmt: cpu_kernels.Format | ggml_kernels.AnyFormat
    kind: str  # names the kernels
    if isinstance(w, BlockMatrix):
        weights, names, kind = [w.blocks], ["P"], w.kind
        fmt = ggml_kernels.block_format(w.kind, w.shape[1])
    else:
        weights, names, kind, fmt = (
            [w.packed, w.scale, w.offset],
            ["P", "S", "M"],
            "q4",
            cpu_kernels.Q4,
        )
    if residual is not None:
        weights, names, kind = [*weights, residual.contiguous()], [*names, "RES"], f"{kind}_add"
    return _matmul(fmt, kind, codes, sums, weights, names)


def _offsets(sums: Tensor, w: OffsetMatrix) -> Tensor:
    """The offsets' share of `x @ w.T`: each group's offset times the activations' group sum.

    `sums[:, 1]` holds `d * sum(q)` per block of 32, the quantized activations' block sums.
    """
    rows, blocks = int(sums.shape[0]), int(sums.shape[2])
    groups = int(w.offset.shape[1])
    group_sums = sums[:, 1, :].reshape(rows, groups, blocks // groups).sum(axis=2)
    return group_sums @ w.offset.T


def _matmul(
    fmt: cpu_kernels.Format | ggml_kernels.AnyFormat,
    kind: str,
    codes: Tensor,
    sums: Tensor,
    weights: list[Tensor],
    weight_names: list[str],
) -> Tensor:
    """Per-row integer dot products for a few rows; a float32 GEMM on the same
    (dequantized) activations for many, where it is several times faster (and for
    F16/BF16 weights, which have no integer codes, at any number of rows)."""
    rows, cols = (int(k) for k in codes.shape)
    n = int(weights[0].shape[0])
    count = threads()
    store = cpu_kernels.RESIDUAL_STORE if "RES" in weight_names else cpu_kernels.PLAIN_STORE
    constants: dict[str, int | str] = {
        "R": rows, "N": n, "K": cols, "B": cols // BLOCK, "STORE_SETUP": store,
    }  # fmt: skip
    if not isinstance(fmt, cpu_kernels.Format):
        constants |= ggml_kernels.constants(fmt, cols)
    out = Tensor.empty(rows, n, dtype=dtypes.float32, device=DEVICE)
    # 16-bit float weights have no integer codes: the GEMM serves any number of rows.
    if rows < cpu_kernels.GEMM_ROWS and not isinstance(fmt, ggml_kernels.FloatFormat):
        template = _row_source(fmt, rows)
        code = cpu_kernels.source(template, **constants, THREADS=count, PORTABLE=int(PORTABLE_C))
        name = f"{kind}_{rows}_{n}_{cols}" + ("_portable" if PORTABLE_C else "")
        fxn = _kernel(name, code, ["OUT", "XQ", "XS", *weight_names], count)
        return out.custom_kernel(codes, sums, *weights, fxn=fxn)[0]
    if rows < cpu_kernels.GEMM_ROWS:
        assert isinstance(fmt, ggml_kernels.FloatFormat)
        return _small_gemm(fmt, kind, codes, sums, weights, weight_names, constants, count)
    if INT_GEMM and isinstance(fmt, ggml_kernels.BlockFormat):
        template = ggml_kernels.int_gemm_source(fmt)
        flags = {"PORTABLE": int(PORTABLE_C), "VNNI": int(VNNI)}
        code = cpu_kernels.source(template, **constants, THREADS=count, **flags)
        name = f"{kind}_int_gemm_{rows}_{n}_{cols}" + ("_portable" if PORTABLE_C else "")
        name += "" if VNNI else "_no_vnni"
        fxn = _kernel(name, code, ["OUT", "XQ", "XS", *weight_names], count)
        return out.custom_kernel(codes, sums, *weights, fxn=fxn)[0]
    padded = cpu_kernels.gemm_padded_rows(rows)
    constants["RP"] = padded
    xt = Tensor.empty(cols, padded, dtype=dtypes.float32, device=DEVICE)
    code = cpu_kernels.source(cpu_kernels.DEQUANTIZE_ROWS_T, **constants)
    name = f"dequantize_rows_t_{rows}_{cols}"
    xt = xt.custom_kernel(codes, sums, fxn=_kernel(name, code, ["XT", "XQ", "XS"]))[0]
    code = cpu_kernels.source(_gemm_source(fmt), **constants, THREADS=count)
    fxn = _kernel(f"{kind}_gemm_{rows}_{n}_{cols}", code, ["OUT", "XT", *weight_names], count)
    return out.custom_kernel(xt, *weights, fxn=fxn)[0]


def _small_gemm(
    fmt: ggml_kernels.FloatFormat,
    kind: str,
    codes: Tensor,
    sums: Tensor,
    weights: list[Tensor],
    weight_names: list[str],
    constants: dict[str, int | str],
    count: int,
) -> Tensor:
    """A few rows times 16-bit float weights (decode): the GEMM without row padding."""
    rows, cols = (int(k) for k in codes.shape)
    n = int(weights[0].shape[0])
    x = Tensor.empty(rows, cols, dtype=dtypes.float32, device=DEVICE)
    code = cpu_kernels.source(cpu_kernels.DEQUANTIZE_ROWS, **constants)
    x = x.custom_kernel(
        codes, sums, fxn=_kernel(f"dequantize_rows_{rows}_{cols}", code, ["X", "XQ", "XS"])
    )[0]
    code = cpu_kernels.source(ggml_kernels.small_gemm_source(fmt), **constants, THREADS=count)
    fxn = _kernel(f"{kind}_small_gemm_{rows}_{n}_{cols}", code, ["OUT", "XF", *weight_names], count)
    out = Tensor.empty(rows, n, dtype=dtypes.float32, device=DEVICE)
    return out.custom_kernel(x, *weights, fxn=fxn)[0]


def _row_source(fmt: cpu_kernels.Format | ggml_kernels.BlockFormat, rows: int) -> Template:
    if isinstance(fmt, ggml_kernels.BlockFormat):
        return ggml_kernels.matmul_source(fmt, rows)
    return cpu_kernels.matmul_source(fmt, rows)


def _gemm_source(fmt: cpu_kernels.Format | ggml_kernels.AnyFormat) -> Template:
    if isinstance(fmt, cpu_kernels.Format):
        return cpu_kernels.gemm_source(fmt)
    return ggml_kernels.gemm_source(fmt)


def dequantize_blocks(w: BlockMatrix) -> Tensor:
    """The float32 weights of `w` decoded by the C kernels' own code (for tests)."""
    rows, cols = w.shape
    fmt = ggml_kernels.block_format(w.kind, cols)
    constants: dict[str, int | str] = {"N": rows, "K": cols, "PORTABLE": int(PORTABLE_C)}
    constants |= ggml_kernels.constants(fmt, cols)
    code = cpu_kernels.source(ggml_kernels.dequantize_source(fmt), **constants)
    out = Tensor.empty(rows, cols, dtype=dtypes.float32, device=DEVICE)
    name = f"dequantize_{w.kind}_{rows}_{cols}" + ("_portable" if PORTABLE_C else "")
    fxn = _kernel(name, code, ["OUT", "P"])
    return out.custom_kernel(w.blocks, fxn=fxn)[0]


def _kernel(
    name: str,
    code: str,
    params: list[str],
    threads: int = 1,
    variables: dict[str, UOp] | None = None,
) -> Callable[..., UOp]:
    """A custom-kernel body: the C `code` with `$PARAM` names bound to the buffers, in order.

    With threads > 1 the kernel takes tinygrad's `core_id` variable (`$TID`), so
    tinygrad (and `runner.KernelList`) run it once per thread index. `variables`
    binds `$NAME`s to tinygrad variables; each must also be bound elsewhere in the
    graph (for example by slicing with it), which is how the kernel gets its value.
    """

    def build(*buffers: UOp) -> UOp:
        pointers = [b.index(*[UOp.const(0, dtypes.int)] * len(b.shape)) for b in buffers]
        srcs = list(pointers)
        bindings = {p: "{%d}" % i for i, p in enumerate(params)}  # noqa: UP031
        for key, var in (variables or {}).items():
            lo, hi = int(var.vmin), int(var.vmax)
            srcs.append(UOp.variable(var.expr, lo, hi, dtypes.int, param=True))
            bindings[key] = "{%d}" % (len(srcs) - 1)  # noqa: UP031
        if threads > 1:
            srcs.append(UOp.variable("core_id", 0, threads - 1, dtypes.int, param=True))
            bindings["TID"] = "{%d}" % (len(srcs) - 1)  # noqa: UP031
        else:
            bindings["TID"] = "0"
        # tinygrad str.format()s the code: C braces must be doubled, then bind.
        escaped = code.replace("{", "{{").replace("}", "}}").replace("$THREADS", str(threads))
        body = Template(escaped).substitute(bindings)
        return UOp(Ops.CUSTOM, dtypes.void, src=tuple(srcs), arg=body).sink(
            arg=KernelInfo(name=name, opts_to_apply=())
        )

    return build


@dataclass(frozen=True)
class AttentionScores:
    """How attention scores are formed: `q.k * scale`, soft-capped, over a window.

    softcap (Gemma 2): scores become `softcap * tanh(score / softcap)`; window: a
    query reads only its last `window` positions (itself included). None: off.
    """

    scale: float
    softcap: float | None = None
    window: int | None = None

    def name_suffix(self) -> str:
        """What sets this kernel apart from the plain one (kernel names must be unique)."""
        cap = f"_cap{_tag(self.softcap)}" if self.softcap else ""
        return cap + (f"_win{self.window}" if self.window else "")


def _tag(value: float) -> str:
    """A float as a C identifier fragment."""
    return repr(value).replace(".", "_").replace("-", "m").replace("+", "")


def attention(
    qkv: Tensor,
    rope: Tensor,
    cache: Tensor,
    start: UOp,
    heads: int,
    kv_heads: int,
    scores: AttentionScores | None = None,
) -> Tensor:
    """Causal attention of T new rows of one request, writing their keys/values into `cache`.

    qkv: `(T, (heads + 2 kv_heads) hd)` projections; rope: `(T, hd)` cos | sin of the rows'
    positions; cache: `(2, kv_heads, C, hd)`, updated in place at rows `start..start+T-1`;
    start: the bound position variable of row 0; scores: scale, soft-cap and window
    (default: 1 / sqrt(hd), neither). Returns `(T, heads * hd)`.
    """
    rows = int(qkv.shape[0])
    _, _, capacity, head_dim = (int(n) for n in cache.shape)
    var = start.unbind()[0]
    s = scores or AttentionScores(head_dim**-0.5)
    constants: dict[str, int | str] = {
        "T": rows, "H": heads, "KV": kv_heads, "HD": head_dim, "C": capacity,
        "SCALE": f"{s.scale!r}f", "SOFTCAP": f"{s.softcap or 0.0!r}f", "WINDOW": s.window or 0,
    }  # fmt: skip
    q = Tensor.empty(rows, heads, head_dim, dtype=dtypes.float32, device=DEVICE)
    store = cpu_kernels.source(cpu_kernels.ROPE_STORE, **constants)
    q, _, _, cache = q.custom_kernel(
        qkv.contiguous(),
        rope.contiguous(),
        cache,
        fxn=_kernel(
            f"rope_store_{rows}_{heads}_{kv_heads}_{head_dim}_{capacity}_{_tag(s.scale)}",
            store,
            ["QOUT", "QKV", "ROPE", "CACHE"],
            variables={"START": var},
        ),
    )
    count = min(threads(), rows * kv_heads)
    attend = cpu_kernels.source(cpu_kernels.attend_source(s.softcap), **constants, THREADS=count)
    out = Tensor.empty(rows, heads * head_dim, dtype=dtypes.float32, device=DEVICE)
    return out.custom_kernel(
        q,
        cache,
        fxn=_kernel(
            f"attend_{rows}_{heads}_{kv_heads}_{head_dim}_{capacity}{s.name_suffix()}",
            attend,
            ["OUT", "Q", "CACHE"],
            threads=count,
            variables={"START": var},
        ),
    )[0]
