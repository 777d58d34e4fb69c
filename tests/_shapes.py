"""Shared test helpers: readable ids for shapes and the tolerances the gate uses."""

from flashcore.autotune import TOLERANCES


def shape_id(b, h, s, d, causal, dtype="float16"):
    return f"B{b}-H{h}-S{s}-D{d}-{'causal' if causal else 'full'}-{dtype}"


# (dtype, atol, rtol), as the gate applies them.
TOL = [(name, t.atol, t.rtol) for name, t in TOLERANCES.items()]


def make_key(**changes):
    """A fixed cache key for store/merge tests; ``changes`` replace fields."""
    import dataclasses

    from flashcore.cache import CacheKey

    base = CacheKey(
        gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0", triton_version="3.1.0",
        kernel="attention_fwd", kernel_hash="0123abcd", dtype="float16", causal=True,
        head_dim=128, seq_len=4096, batch=4, heads=32,
    )  # fmt: skip
    # kv_heads and kv_len follow heads and seq_len unless changed themselves (0 means "the same")
    changes.setdefault("kv_heads", 0)
    changes.setdefault("kv_len", 0)
    return dataclasses.replace(base, **changes)


def fwd_config(**changes):
    """attention_fwd's CPU default config with ``changes``: every key of its search space, as a cache row must
    hold (a row with a key missing is refused when the cache is read)."""
    from flashcore.kernels import load_space

    return dict(load_space("attention_fwd", "cpu").default, **changes)
