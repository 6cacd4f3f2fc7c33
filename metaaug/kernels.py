"""The CPU-kernel environment variables a user may set, and the values each library accepts.

torch (ATen), oneDNN and MKL read these at load; a value they do not know is ignored (torch warns once, the
others say nothing), so a typo would silently unpin the kernels and `dvc.lock` would stop reproducing on
another CPU. metaaug.stages.pin_cpu_kernels checks every one that is set against these lists first.
"""

from __future__ import annotations

from typing import Mapping

from metaaug.errors import MetaaugError

_ONEDNN = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_MIC", "AVX512_MIC_4OPS", "AVX512_CORE",
           "AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX512_CORE_AMX",
           "AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2",
           "DEFAULT", "ALL")  # oneDNN's CPU dispatcher control, upper case as its docs spell them
_MKL_BRANCHES = ("AUTO", "COMPATIBLE", "SSE2", "SSSE3", "SSE4_1", "SSE4_2", "AVX", "AVX2", "AVX512", "AVX512_E1",
                 "AVX512_MIC", "AVX512_MIC_E1")  # oneMKL's conditional numerical reproducibility branches

ACCEPTED: dict[str, tuple[str, ...]] = {
    "ATEN_CPU_CAPABILITY": ("default", "avx2", "avx512"),  # x86-64 (aten/src/ATen/native/DispatchStub.cpp)
    "ONEDNN_MAX_CPU_ISA": _ONEDNN,
    "DNNL_MAX_CPU_ISA": _ONEDNN,  # oneDNN's older name for the same setting
    "MKL_CBWR": _MKL_BRANCHES,  # also as BRANCH=<branch> and with ,STRICT
}


def _mkl_branch(value: str) -> str:
    """The branch of an MKL_CBWR value `[BRANCH=]<branch>[,STRICT]`."""
    branch, _, flag = value.partition(",")
    return branch.removeprefix("BRANCH=") if flag in ("", "STRICT") else value


def check_kernel_overrides(environ: Mapping[str, str]) -> None:
    """Stop with one line naming the first kernel variable set to a value its library does not accept."""
    for name, accepted in ACCEPTED.items():
        value = environ.get(name)
        if value is None:
            continue
        if (_mkl_branch(value) if name == "MKL_CBWR" else value) not in accepted:
            shown = ", ".join(accepted) + (" (each optionally as BRANCH=<x> and with ,STRICT)" if name == "MKL_CBWR"
                                           else "")
            raise MetaaugError(f"environment variable {name}={value!r} is not a value its library accepts (it would "
                               f"silently unpin the CPU kernels); expected one of {shown}, or unset it")
