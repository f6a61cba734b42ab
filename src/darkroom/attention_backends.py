"""What darkroom knows of diffusers' attention backends, without importing torch (settings
check combinations with it before a worker loads anything)."""

from __future__ import annotations

# The backends that refuse an attention mask (they raise "`attn_mask` is not supported"):
# flash-attn 2/3/4 in every packaging, AITER, SageAttention's fixed-length kernels, torch's own
# flash kernel and XLA. tests/engine/test_speed_options.py reads the installed diffusers'
# backends and checks this list against them.
MASK_REFUSING_BACKENDS = frozenset(
    {
        "flash",
        "flash_hub",
        "flash_4_hub",
        "_flash_3",
        "_flash_3_hub",
        "aiter_fa2_hub",
        "_native_flash",
        "_native_xla",
        "sage",
        "sage_hub",
        "sage_blackwell_hub",
        "_sage_qk_int8_pv_fp8_cuda",
        "_sage_qk_int8_pv_fp8_cuda_sm90",
        "_sage_qk_int8_pv_fp16_cuda",
        "_sage_qk_int8_pv_fp16_triton",
    }
)

# Backends that attend grouped-query heads as they are: torch's SDPA with `enable_gqa` (its
# default choice, flash and math kernels), and the flash-attn kernels, which take fewer key/value
# heads natively. With any other backend the key/value heads are copied to the query heads'
# count, as diffusers' processor does.
GQA_BACKENDS = frozenset({None, "native", "_native_flash", "_native_math", "flash", "_flash_3"})
