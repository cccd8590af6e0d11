"""compress / project end to end on synthetic adapters: scopes (one adapter, a group, clusters), rank
policies and their errors, compatibility checks, the fast projection path and stored-core errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import pytest
import torch

from soppu.adapter import AdapterConfig, LoraAdapter, LoraModule
from soppu.compression import Mode, RankPolicy, compress, fit_module, project, reconstruction_errors
from soppu.compression.factors import core_delta, stack_modules
from soppu.compression.rank import compressed_parameters
from soppu.errors import CompressionError

BASE = "toy/base"


# These matrices are tiny: thread barriers cost more than the math (see the fixture's docstring).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


Q, V = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"
SHAPES = {Q: (32, 48), V: (40, 48)}


def _adapter(
    seed: int,
    *,
    r: int = 4,
    shapes: Mapping[str, tuple[int, int]] = SHAPES,
    base: str | None = BASE,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    spaces: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    dtype: torch.dtype = torch.float32,
) -> LoraAdapter:
    """A random adapter; with ``spaces`` (module -> (U, V)) its column and row spaces lie inside U and V."""
    gen = torch.Generator().manual_seed(seed)
    config = AdapterConfig(r=r, lora_alpha=2 * r, target_modules=targets, base_model_name_or_path=base)
    modules = {}
    for module, (d_out, d_in) in shapes.items():
        if spaces is None:
            b, a = torch.randn(d_out, r, generator=gen), torch.randn(r, d_in, generator=gen)
        else:
            u, v = spaces[module]
            b = u @ torch.randn(u.shape[1], r, generator=gen)
            a = torch.randn(r, v.shape[1], generator=gen) @ v.T
        modules[module] = LoraModule(b=b.to(dtype), a=a.to(dtype), scaling=config.scaling_for(module))
    return LoraAdapter(config, modules)


def _spaces(seed: int, width: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {
        m: (
            torch.linalg.qr(torch.randn(o, width, generator=gen)).Q,
            torch.linalg.qr(torch.randn(i, width, generator=gen)).Q,
        )
        for m, (o, i) in SHAPES.items()
    }


def _group(n: int, *, seed: int = 0, **kwargs: object) -> list[tuple[str, LoraAdapter]]:
    return [(f"user{i}", _adapter(seed + i, **kwargs)) for i in range(n)]  # type: ignore[arg-type]


def _dense_error(compression, name: str, adapter: LoraAdapter, module: str) -> float:  # type: ignore[no-untyped-def]
    compressed = compression.adapter(name)
    approx = core_delta(compression.basis(compressed, module), compressed.cores[module], compression.mode)
    w = adapter.modules[module].delta()
    return float((w - approx).norm() / w.norm())


def _code(excinfo: pytest.ExceptionInfo[CompressionError]) -> str:
    return excinfo.value.code


def test_one_adapter_is_a_rank_reduction() -> None:
    name, adapter = "solo", _adapter(1, r=6)
    reduced = compress([(name, adapter)], policy=RankPolicy.fixed(2), device="cpu")
    assert [c.bases[Q].rank for c in reduced.clusters] == [2]
    for module in SHAPES:
        sigma = torch.linalg.svdvals(adapter.modules[module].delta().double())
        best = float(sigma[2:].pow(2).sum().sqrt() / sigma.pow(2).sum().sqrt())  # Eckart-Young
        assert abs(reduced.adapter(name).errors[module] - best) < 1e-5
    exact = compress([(name, adapter)], policy=RankPolicy.fixed(16), device="cpu")
    assert exact.clusters[0].bases[Q].rank == 6  # capped at the adapter's own rank
    assert max(exact.adapter(name).errors.values()) < 1e-5


@pytest.mark.parametrize("mode", [Mode.FULL, Mode.DIAG])
def test_group_with_mixed_ranks_fills_every_field(mode: Mode) -> None:
    adapters = [("a", _adapter(1, r=2)), ("b", _adapter(2, r=4)), ("c", _adapter(3, r=3))]
    messages: list[str] = []
    result = compress(adapters, mode=mode, policy=RankPolicy.fixed(9), device="cpu", progress=messages.append)
    assert result.mode == mode and result.base_model == BASE and len(result.clusters) == 1
    assert messages and all(isinstance(m, str) for m in messages)
    for name, adapter in adapters:
        compressed = result.adapter(name)
        assert compressed.cluster == 0
        assert compressed.source_ranks == {m: adapter.config.r for m in SHAPES}
        assert compressed.source_scalings == {m: 2.0 for m in SHAPES}
        for module in SHAPES:
            core = compressed.cores[module]
            assert core.device.type == "cpu" and core.dtype == torch.float32
            assert core.shape == ((9, 9) if mode == Mode.FULL else (9,))
            assert abs(compressed.errors[module] - _dense_error(result, name, adapter, module)) < 1e-5
            if mode == Mode.FULL:
                assert compressed.errors[module] < 1e-5  # R = sum of ranks: exact
    basis = result.clusters[0].bases[Q]
    assert basis.u.device.type == "cpu" and basis.u.dtype == torch.float32


def test_compress_is_deterministic_and_upcasts_bf16() -> None:
    adapters = _group(4, seed=10, dtype=torch.bfloat16)
    first = compress(adapters, policy=RankPolicy.fixed(5), device="cpu")
    again = compress(adapters, policy=RankPolicy.fixed(5), device="cpu")
    for one, two in zip(first.adapters, again.adapters, strict=True):
        assert all(torch.equal(one.cores[m], two.cores[m]) for m in SHAPES)
        assert one.cores[Q].dtype == torch.float32
    assert torch.equal(first.clusters[0].bases[V].u, again.clusters[0].bases[V].u)


def test_project_gives_the_fitted_cores_without_refitting() -> None:
    adapters = _group(5, seed=20)
    for mode in (Mode.FULL, Mode.DIAG):
        result = compress(adapters, mode=mode, policy=RankPolicy.fixed(6), device="cpu")
        name, adapter = adapters[2]
        projected = project(result, name, adapter, device="cpu")
        fitted = result.adapter(name)
        assert projected.cluster == fitted.cluster
        for module in SHAPES:
            torch.testing.assert_close(projected.cores[module], fitted.cores[module], atol=1e-5, rtol=1e-5)
            assert abs(projected.errors[module] - fitted.errors[module]) < 1e-5


def test_project_picks_the_cluster_that_fits_and_checks_compatibility() -> None:
    space_a, space_b = _spaces(1, 4), _spaces(2, 4)
    adapters = [(f"a{i}", _adapter(30 + i, spaces=space_a)) for i in range(3)]
    adapters += [(f"b{i}", _adapter(40 + i, spaces=space_b)) for i in range(3)]
    result = compress(adapters, policy=RankPolicy.fixed(4), clusters=2, device="cpu")
    newcomer = project(result, "new", _adapter(99, spaces=space_b), device="cpu")
    assert newcomer.cluster == result.adapter("b0").cluster
    assert max(newcomer.errors.values()) < 1e-4
    with pytest.raises(CompressionError) as info:
        project(result, "other", _adapter(5, base="other/base"), device="cpu")
    assert _code(info) == "incompatible_adapters" and info.value.detail["adapter"] == "other"


@pytest.mark.parametrize(
    ("odd", "field"),
    [
        (_adapter(7, base="another/base"), "base_model_name_or_path"),
        (_adapter(7, targets=("q_proj", "k_proj")), "target_modules"),
        (_adapter(7, shapes={Q: SHAPES[Q]}), "modules"),
        (_adapter(7, shapes={Q: SHAPES[Q], V: (24, 48)}), f"shape of {V}"),
    ],
)
def test_incompatible_adapters_are_named(odd: LoraAdapter, field: str) -> None:
    with pytest.raises(CompressionError) as info:
        compress([*_group(2), ("odd", odd)], policy=RankPolicy.fixed(4), device="cpu")
    assert _code(info) == "incompatible_adapters"
    assert info.value.detail == {"adapter": "odd", "field": field}
    assert "'odd'" in info.value.message


def test_nothing_to_compress_and_bad_cluster_counts() -> None:
    with pytest.raises(CompressionError) as info:
        compress([], policy=RankPolicy.fixed(4), device="cpu")
    assert _code(info) == "no_adapters"
    for clusters in (0, 3):
        with pytest.raises(CompressionError) as info:
            compress(_group(2), policy=RankPolicy.fixed(4), clusters=clusters, device="cpu")
        assert _code(info) == "bad_clusters"


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"rank": 4, "ratio": 2.0}, {"rank": 0}, {"rank": 2.5}, {"max_error": 0.0}, {"max_error": 1.5}, {"ratio": -1}],
)
def test_invalid_policies_are_bad_rank(kwargs: dict[str, float]) -> None:
    with pytest.raises(CompressionError) as info:
        RankPolicy(**kwargs)  # type: ignore[arg-type]
    assert _code(info) == "bad_rank"


def test_error_budget_gives_the_smallest_rank_that_meets_it() -> None:
    adapters = _group(4, seed=50)
    budget = 0.5
    result = compress(adapters, policy=RankPolicy.for_error(budget), device="cpu")
    for module in SHAPES:
        rank = result.clusters[0].bases[module].rank
        assert max(a.errors[module] for a in result.adapters) <= budget
        smaller = fit_module(stack_modules([a.modules[module] for _, a in adapters], device="cpu"), rank - 1, Mode.FULL)
        assert smaller.worst_error > budget
    with pytest.raises(CompressionError) as info:
        compress(adapters, mode=Mode.DIAG, policy=RankPolicy.for_error(1e-9), device="cpu")
    assert _code(info) == "bad_rank" and "not reachable" in info.value.message


def test_ratio_gives_the_largest_rank_that_reaches_it() -> None:
    adapters = _group(6, seed=60)
    target = 3.0
    result = compress(adapters, policy=RankPolicy.for_ratio(target), device="cpu")
    for module, (d_out, d_in) in SHAPES.items():
        rank = result.clusters[0].bases[module].rank
        original = 6 * 4 * (d_out + d_in)
        assert original / compressed_parameters(rank, d_out, d_in, 6, 1, Mode.FULL) >= target
        assert original / compressed_parameters(rank + 1, d_out, d_in, 6, 1, Mode.FULL) < target
    with pytest.raises(CompressionError) as info:
        compress(adapters, policy=RankPolicy.for_ratio(1000), device="cpu")
    assert _code(info) == "bad_rank" and "best is" in info.value.message
    assert info.value.detail["best_ratio"] < 1000


def test_clustering_separates_groups_and_beats_one_cluster() -> None:
    space_a, space_b = _spaces(3, 4), _spaces(4, 4)
    adapters = [(f"a{i}", _adapter(70 + i, spaces=space_a)) for i in range(4)]
    adapters += [(f"b{i}", _adapter(80 + i, spaces=space_b)) for i in range(4)]
    one = compress(adapters, policy=RankPolicy.fixed(4), device="cpu")
    two = compress(adapters, policy=RankPolicy.fixed(4), clusters=2, device="cpu")
    groups = {name[0]: set() for name, _ in adapters}
    for compressed in two.adapters:
        groups[compressed.name[0]].add(compressed.cluster)
    assert groups["a"] != groups["b"] and all(len(g) == 1 for g in groups.values())

    def worst(c) -> float:  # type: ignore[no-untyped-def]
        return max(max(a.errors.values()) for a in c.adapters)

    assert worst(two) < 1e-4 < 0.5 < worst(one)


def test_no_cluster_is_left_empty() -> None:
    twin = _adapter(90)
    adapters = [(f"twin{i}", twin) for i in range(4)]  # identical: every seed distance ties
    result = compress(adapters, policy=RankPolicy.fixed(4), clusters=3, device="cpu")
    assert sorted({a.cluster for a in result.adapters}) == [0, 1, 2]
    assert max(max(a.errors.values()) for a in result.adapters) < 1e-5


def test_error_budget_with_clusters_holds_in_every_cluster() -> None:
    space_a, space_b = _spaces(5, 6), _spaces(6, 6)
    adapters = [(f"a{i}", _adapter(100 + i, spaces=space_a)) for i in range(3)]
    adapters += [(f"b{i}", _adapter(110 + i, spaces=space_b)) for i in range(3)]
    result = compress(adapters, policy=RankPolicy.for_error(0.3), clusters=2, device="cpu")
    assert len({a.cluster for a in result.adapters}) == 2
    assert max(max(a.errors.values()) for a in result.adapters) <= 0.3


@pytest.mark.parametrize("clusters", [1, 2])
def test_float64_audit_agrees_end_to_end(clusters: int) -> None:
    adapters = _group(4, seed=120)
    plain = compress(adapters, policy=RankPolicy.fixed(5), clusters=clusters, device="cpu")
    audited = compress(adapters, policy=RankPolicy.fixed(5), clusters=clusters, device="cpu", audit=True)
    for one, two in zip(plain.adapters, audited.adapters, strict=True):
        assert one.cluster == two.cluster
        assert all(abs(one.errors[m] - two.errors[m]) < 1e-5 for m in SHAPES)


def test_reconstruction_errors_of_stored_cores() -> None:
    adapters = _group(3, seed=130)
    result = compress(adapters, policy=RankPolicy.fixed(5), device="cpu")
    name, adapter = adapters[1]
    errors = reconstruction_errors(result, name, adapter, device="cpu")
    assert errors.keys() == set(SHAPES)
    assert all(abs(errors[m] - result.adapter(name).errors[m]) < 1e-6 for m in SHAPES)
    # Another adapter's original against these cores: large error, same code path.
    assert min(reconstruction_errors(result, name, adapters[0][1], device="cpu").values()) > 0.5
    broken = replace(result.adapter(name), cores={m: c[:4, :4] for m, c in result.adapter(name).cores.items()})
    damaged = replace(result, adapters=[broken if a.name == name else a for a in result.adapters])
    with pytest.raises(CompressionError) as info:
        reconstruction_errors(damaged, name, adapter, device="cpu")
    assert _code(info) == "basis_mismatch"
