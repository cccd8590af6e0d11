"""The LoRA math the adapter model exposes: delta-W = scaling * B @ A, lora_output against the dense delta (one
adapter, and one per row of a batch), and applying an adapter to a model with hooks that leave its weights alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from soppu.adapter import (
    LoraAdapter,
    read_adapter,
)
from soppu.adapter.apply import LoraHooks, apply_adapter
from soppu.lora import delta_weight, lora_output, lora_scaling
from tests.support.adapter_factory import (
    MODULES,
    Q_PROJ,
    V_PROJ,
    make_adapter,
    make_files,
    parts,
)


def test_delta_weight_is_scaling_b_a() -> None:
    adapter = read_adapter(parts(make_files(lora_alpha=12, use_rslora=True)))
    for name, module in adapter:
        expected = module.scaling * (module.b.double() @ module.a.double())
        assert module.delta().shape == MODULES[name]
        torch.testing.assert_close(module.delta().double(), expected, rtol=1e-6, atol=1e-6)
        assert torch.equal(module.delta(), delta_weight(module.b, module.a, module.scaling))


def test_lora_output_matches_the_dense_delta() -> None:
    module = make_adapter().modules[V_PROJ]
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))
    out = lora_output(x, module.a, module.b, module.scaling)
    assert out.shape == (3, 5, 8)
    torch.testing.assert_close(out, x @ module.delta().T, rtol=1e-5, atol=1e-5)


def test_batched_lora_output_applies_each_rows_adapter() -> None:
    n = 4
    adapters = [make_adapter(seed=i, lora_alpha=2.0 * (i + 1), use_rslora=i % 2 == 1) for i in range(n)]
    mods = [a.modules[Q_PROJ] for a in adapters]
    a = torch.stack([m.a for m in mods])  # n x r x d_in
    b = torch.stack([m.b for m in mods])  # n x d_out x r
    scaling = torch.tensor([m.scaling for m in mods]).view(n, 1, 1)
    x = torch.randn(n, 7, 16, generator=torch.Generator().manual_seed(2))

    batched = lora_output(x, a, b, scaling)
    assert batched.shape == (n, 7, 16)
    assert len({m.scaling for m in mods}) == n  # the rows really differ
    for i, m in enumerate(mods):
        torch.testing.assert_close(batched[i], lora_output(x[i], m.a, m.b, m.scaling), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(batched[i], x[i] @ m.delta().T, rtol=1e-5, atol=1e-5)


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(16, 16, bias=False)
        self.v_proj = nn.Linear(16, 8, bias=True)


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = _Attn()


class _Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Layer()])


class _Toy(nn.Module):
    """Module paths like a causal LM's: ``model.layers.0.self_attn.q_proj``."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _Inner()


def test_apply_adapter_adds_the_delta_and_leaves_weights_alone() -> None:
    torch.manual_seed(0)
    model = _Toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapter = make_adapter()
    x = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(3))
    q = model.get_submodule(Q_PROJ)
    v = model.get_submodule(V_PROJ)

    with torch.no_grad(), apply_adapter(model, adapter):
        got_q, got_v = q(x), v(x)
    with torch.no_grad():
        torch.testing.assert_close(got_q, x @ (q.weight + adapter.modules[Q_PROJ].delta()).T, rtol=1e-5, atol=1e-5)
        want_v = x @ (v.weight + adapter.modules[V_PROJ].delta()).T + v.bias
        torch.testing.assert_close(got_v, want_v, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(q(x), x @ q.weight.T)  # hooks removed on exit
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_lora_hooks_set_swaps_factors_and_checks_modules() -> None:
    model = _Toy()
    first, second = make_adapter(seed=1), make_adapter(seed=2)
    x = torch.randn(1, 16, generator=torch.Generator().manual_seed(4))
    q = model.get_submodule(Q_PROJ)

    def factors(adapter: LoraAdapter) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
        return {n: (m.a, m.b, m.scaling) for n, m in adapter.modules.items()}

    with torch.no_grad(), LoraHooks(model, factors(first)) as hooks:
        torch.testing.assert_close(q(x), x @ (q.weight + first.modules[Q_PROJ].delta()).T, rtol=1e-5, atol=1e-5)
        hooks.set(factors(second))
        torch.testing.assert_close(q(x), x @ (q.weight + second.modules[Q_PROJ].delta()).T, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError):
            hooks.set({Q_PROJ: factors(second)[Q_PROJ]})


def test_lora_scaling_rejects_nonpositive_rank() -> None:
    with pytest.raises(ValueError):
        lora_scaling(8, 0)
