"""KV cache dtypes: how a K or V element is stored and what it costs in bytes.

One `KVDtype` per storage format, registered in `KV_DTYPES`:
    fp32, fp16, bf16   the element as is
    int8               symmetric, one float16 scale per (token, kv head): x ~ q * scale
    int8-asym          asymmetric, a float16 scale and a float16 zero point (the row minimum,
                       rounded down) per (token, kv head): x ~ (q + 128) * scale + zero_point;
                       a torch reference only (the Triton kernels read symmetric scales)
    fp8                float8 e4m3 with one float16 scale per (token, kv head): x ~ q * scale
                       (needs a torch with float8_e4m3fn to hold tensors)
`scale_bytes` is the per-(token, kv head) overhead of K or of V (scale + zero point), so the
bytes of one token in one layer are 2 * num_kv_heads * (head_dim * bytes_per_element +
scale_bytes). No torch import at module load: sizing and the analytic backend need none.
"""

from __future__ import annotations

from dataclasses import dataclass


class UnknownKVDtypeError(ValueError):
    """A KV dtype name that is not registered, or one this torch cannot hold."""


@dataclass(frozen=True)
class KVDtype:
    name: str
    storage: str  # torch dtype attribute: "float16", "int8", "float8_e4m3fn", ...
    bytes_per_element: int
    scale_bytes: int  # per (token, kv head), for K and again for V
    quantized: bool
    symmetric: bool = True
    description: str = ""

    @property
    def has_zero_point(self) -> bool:
        return self.quantized and not self.symmetric

    @property
    def torch_dtype(self):
        """The storage torch.dtype (imports torch)."""
        import torch

        dtype = getattr(torch, self.storage, None)
        if dtype is None:
            raise UnknownKVDtypeError(f"KV dtype {self.name!r} needs torch.{self.storage}, which "
                                      f"torch {torch.__version__} does not have")
        return dtype


KV_DTYPES: dict[str, KVDtype] = {
    spec.name: spec
    for spec in (
        KVDtype("fp32", "float32", 4, 0, False, description="float32"),
        KVDtype("fp16", "float16", 2, 0, False, description="float16"),
        KVDtype("bf16", "bfloat16", 2, 0, False, description="bfloat16"),
        KVDtype("int8", "int8", 1, 2, True, description="int8, symmetric fp16 scale per (token, head)"),
        KVDtype("int8-asym", "int8", 1, 4, True, symmetric=False,
                description="int8, fp16 scale + fp16 zero point per (token, head); reference only"),
        KVDtype("fp8", "float8_e4m3fn", 1, 2, True, description="float8 e4m3, fp16 scale per (token, head)"),
    )
}

_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16",
            "bfloat16": "bf16", "float8_e4m3fn": "fp8", "fp8-e4m3": "fp8", "e4m3": "fp8"}


def get_kv_dtype(spec: "str | KVDtype | object") -> KVDtype:
    """A KVDtype from its name, an alias ("float16", "half", "e4m3"), a torch.dtype, or itself."""
    if isinstance(spec, KVDtype):
        return spec
    name = str(spec).removeprefix("torch.").lower()
    name = _ALIASES.get(name, name)
    if name not in KV_DTYPES:
        raise UnknownKVDtypeError(f"unknown KV dtype {spec!r}; valid: {', '.join(KV_DTYPES)}")
    return KV_DTYPES[name]
