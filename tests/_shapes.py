"""Shared test helpers: readable ids for shapes and the tolerances the gate uses."""

from autotune import TOLERANCES


def shape_id(b, h, s, d, causal, dtype="float16"):
    return f"B{b}-H{h}-S{s}-D{d}-{'causal' if causal else 'full'}-{dtype}"


# (dtype, atol, rtol), as the gate applies them.
TOL = [(name, t.atol, t.rtol) for name, t in TOLERANCES.items()]
