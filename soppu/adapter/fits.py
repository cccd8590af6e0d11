"""Whether an adapter fits the base model that serves it: every adapted module is a linear layer of that model,
with the adapter's ``(d_out, d_in)``. An adapter that does not fit can never be served, so the compressor
refuses it at upload (422 ``shape_mismatch``) rather than store it."""

from __future__ import annotations

from collections.abc import Mapping

from soppu.adapter.model import LoraAdapter
from soppu.errors import AdapterError
from soppu.errors import AdapterErrorCode as Code

__all__ = ["check_fits"]

_LISTED = 5  # modules named in a refusal


def check_fits(adapter: LoraAdapter, shapes: Mapping[str, tuple[int, int]], base_model: str) -> None:
    """Raise ``shape_mismatch`` naming the first modules that are missing from, or shaped unlike, the base model's
    linear layers ``shapes`` (as :func:`soppu.models.linear_shapes` gives them)."""
    missing = [module for module, _ in adapter if module not in shapes]
    if missing:
        raise AdapterError(
            Code.SHAPE_MISMATCH,
            f"module(s) {missing[:_LISTED]} are not linear layers of the served base model {base_model!r}",
            module=missing[0],
        )
    wrong = [(module, lora.shape, shapes[module]) for module, lora in adapter if lora.shape != shapes[module]]
    if wrong:
        module, got, want = wrong[0]
        raise AdapterError(
            Code.SHAPE_MISMATCH,
            f"module {module!r} is {got[0]}x{got[1]} (d_out x d_in), but the served base model {base_model!r} has "
            f"{want[0]}x{want[1]} there ({len(wrong)} module(s) differ)",
            module=module,
        )
