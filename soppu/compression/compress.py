"""The public entry points: :func:`compress` N adapters into shared bases plus cores, :func:`project` one
more adapter onto an existing compression without refitting, and :func:`reconstruction_errors` of a stored
compressed adapter against its original.

This module validates the input (every adapter must share the base model, the target modules and each
module's shape), moves factors to the device as float32, picks ranks by the :class:`RankPolicy`, runs the
per-module fits (``jd``) or the clustering (``cluster``), and packs the result into the data types of
``model``, on the CPU in float32. Modules are compressed independently (with K = 1 one module's factors are
on the device at a time). Deterministic for the same inputs and seed. No I/O; ``progress`` only reports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from soppu.adapter.model import LoraAdapter
from soppu.compression.cluster import Clustering, assignment_errors, cluster_adapters
from soppu.compression.factors import FactorStack, exact_float32, project_cores, stack_modules
from soppu.compression.jd import FitResult, fit_module, rank_cap
from soppu.compression.model import Cluster, CompressedAdapter, Compression, Mode, ModuleBasis
from soppu.compression.rank import RankPolicy, ratio_rank, search_rank
from soppu.compression.residual import relative_errors
from soppu.errors import CompressionError
from soppu.models import resolve_device

__all__ = ["compress", "project", "reconstruction_errors"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class _Reference:
    """What every adapter of one compression must agree on."""

    source: str  # who set the reference, for messages: an adapter's name or "the compression"
    base_model: str | None
    target_modules: tuple[str, ...] | str
    shapes: dict[str, tuple[int, int]]  # module -> (d_out, d_in)


def _targets(target_modules: tuple[str, ...] | str) -> tuple[str, ...] | str:
    # A list of names is a set (order and repeats mean nothing to PEFT); a pattern is compared as written.
    return target_modules if isinstance(target_modules, str) else tuple(sorted(set(target_modules)))


def _check(reference: _Reference, name: str, adapter: LoraAdapter) -> None:
    """Raise ``incompatible_adapters`` naming the adapter and the first field that disagrees."""

    def fail(field: str, got: object, expected: object) -> CompressionError:
        return CompressionError(
            "incompatible_adapters",
            f"adapter {name!r} has {field} {got!r}, but {reference.source} has {expected!r}",
            adapter=name,
            field=field,
        )

    if adapter.base_model != reference.base_model:
        raise fail("base_model_name_or_path", adapter.base_model, reference.base_model)
    if _targets(adapter.config.target_modules) != reference.target_modules:
        raise fail("target_modules", _targets(adapter.config.target_modules), reference.target_modules)
    if set(adapter.modules) != set(reference.shapes):
        raise fail("modules", sorted(adapter.modules), sorted(reference.shapes))
    for module, lora in sorted(adapter.modules.items()):
        if lora.shape != reference.shapes[module]:
            raise fail(f"shape of {module}", lora.shape, reference.shapes[module])


def _device(device: str | torch.device) -> torch.device:
    return resolve_device(device) if isinstance(device, str) else device


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def compress(
    adapters: Sequence[tuple[str, LoraAdapter]],
    *,
    mode: Mode = Mode.FULL,
    policy: RankPolicy,
    clusters: int = 1,
    device: str | torch.device = "auto",
    tol: float = 1e-7,
    max_iter: int = 200,
    seed: int = 0,
    chunk_size: int | None = None,
    audit: bool = False,
    progress: Progress | None = None,
) -> Compression:
    """Compress ``(name, adapter)`` pairs jointly: one adapter is a rank reduction, several share bases, and
    ``clusters`` > 1 groups them first (Lloyd's algorithm over whole adapters).

    Raises ``CompressionError``: ``no_adapters``, ``incompatible_adapters`` (naming the adapter and field),
    ``bad_rank`` (policy unreachable), ``bad_clusters``. ``audit`` recomputes the reported errors in float64.
    """
    if not adapters:
        raise CompressionError("no_adapters", "nothing to compress: the list of adapters is empty")
    if not isinstance(policy, RankPolicy):
        raise TypeError(f"policy must be a RankPolicy, got {type(policy).__name__}")
    mode = Mode(mode)
    names = [name for name, _ in adapters]
    if len(set(names)) != len(names):
        raise ValueError(f"adapter names must be unique: {sorted({n for n in names if names.count(n) > 1})}")
    first_name, first = adapters[0]
    reference = _Reference(
        source=f"adapter {first_name!r}",
        base_model=first.base_model,
        target_modules=_targets(first.config.target_modules),
        shapes={module: lora.shape for module, lora in first.modules.items()},
    )
    for name, adapter in adapters:
        _check(reference, name, adapter)
    if not 1 <= clusters <= len(adapters):
        raise CompressionError(
            "bad_clusters", f"the number of clusters must lie in 1..{len(adapters)} (N adapters), got {clusters}"
        )
    dev = _device(device)
    modules = sorted(reference.shapes)

    def stack(module: str) -> FactorStack:
        return stack_modules([adapter.modules[module] for _, adapter in adapters], device=dev)

    def fit(part: FactorStack, rank: int) -> FitResult:
        generator = torch.Generator().manual_seed(seed)
        return fit_module(
            part, rank, mode, tol=tol, max_iter=max_iter, chunk_size=chunk_size, generator=generator, audit=audit
        )

    with exact_float32():
        if clusters == 1:
            fits: dict[str, FitResult] = {}
            for index, module in enumerate(modules, 1):
                # One module's stack on the device at a time; its results wait on the CPU.
                fits[module] = _on_cpu(_fit_by_policy(stack(module), policy, mode, 1, module, fit))
                _say(progress, _fit_line(index, len(modules), module, fits[module]))
            clustering = Clustering([0] * len(adapters), [fits], 1, True)
        else:
            stacks = {module: stack(module) for module in modules}
            clustering = _clustered(
                stacks, policy, mode, clusters, fit, tol, max_iter, chunk_size, seed, audit, progress
            )
    return _pack(adapters, mode, reference, modules, clustering)


def _on_cpu(result: FitResult) -> FitResult:
    basis = ModuleBasis(result.basis.u.cpu(), result.basis.v.cpu())
    return replace(result, basis=basis, cores=result.cores.cpu(), errors=result.errors.cpu())


def _fit_by_policy(
    stack: FactorStack, policy: RankPolicy, mode: Mode, clusters: int, module: str, fit: Callable[..., FitResult]
) -> FitResult:
    cap = rank_cap(*stack.shape, stack.ranks, mode)
    if policy.max_error is not None:
        return search_rank(policy.max_error, cap, lambda rank: fit(stack, rank), module)
    return fit(stack, _static_rank(stack, policy, mode, clusters, module))


def _static_rank(stack: FactorStack, policy: RankPolicy, mode: Mode, clusters: int, module: str) -> int:
    """The rank a fixed-rank or ratio policy gives one module (no fit needed)."""
    cap = rank_cap(*stack.shape, stack.ranks, mode)
    if policy.rank is not None:
        return min(policy.rank, cap)
    assert policy.ratio is not None
    return ratio_rank(policy.ratio, *stack.shape, stack.ranks, clusters, mode, cap, module)


def _clustered(
    stacks: Mapping[str, FactorStack],
    policy: RankPolicy,
    mode: Mode,
    k: int,
    fit: Callable[..., FitResult],
    tol: float,
    max_iter: int,
    chunk_size: int | None,
    seed: int,
    audit: bool,
    progress: Progress | None,
) -> Clustering:
    """Cluster, then (for an error budget) shrink each cluster's ranks to the smallest that meet it."""
    if policy.max_error is None:
        ranks = {m: _static_rank(s, policy, mode, k, m) for m, s in stacks.items()}
    else:
        # Cluster at the rank one shared basis would need; each cluster then needs at most about that.
        ranks = {m: _fit_by_policy(s, policy, mode, 1, m, fit).rank for m, s in stacks.items()}
    _say(progress, f"clustering {next(iter(stacks.values())).n} adapters into {k} clusters")
    clustering = cluster_adapters(
        stacks, k, ranks, mode, tol=tol, max_iter=max_iter, chunk_size=chunk_size, seed=seed, audit=audit
    )
    _say(progress, f"clustering took {clustering.rounds} rounds ({'stable' if clustering.stable else 'round cap'})")
    fits = clustering.fits
    if policy.max_error is not None:
        fits = [
            {m: _fit_by_policy(s.select(clustering.members(c)), policy, mode, 1, m, fit) for m, s in stacks.items()}
            for c in range(k)
        ]
    for c, cluster_fits in enumerate(fits):
        for index, (module, result) in enumerate(sorted(cluster_fits.items()), 1):
            _say(progress, f"cluster {c}: " + _fit_line(index, len(cluster_fits), module, result))
    return Clustering(clustering.assignments, fits, clustering.rounds, clustering.stable)


def _fit_line(index: int, total: int, module: str, result: FitResult) -> str:
    return f"module {index}/{total} {module}: R={result.rank}, worst error {result.worst_error:.3g}"


def _pack(
    adapters: Sequence[tuple[str, LoraAdapter]],
    mode: Mode,
    reference: _Reference,
    modules: list[str],
    clustering: Clustering,
) -> Compression:
    """The model types, on the CPU in float32; each core gets its own storage (no views into a big tensor)."""
    clusters = [
        Cluster({m: ModuleBasis(f.basis.u.float().cpu(), f.basis.v.float().cpu()) for m, f in cluster_fits.items()})
        for cluster_fits in clustering.fits
    ]
    row: dict[int, tuple[int, int]] = {}  # adapter index -> (cluster, row in that cluster's fits)
    for c in range(len(clustering.fits)):
        for j, i in enumerate(clustering.members(c)):
            row[i] = (c, j)
    packed = []
    for i, (name, adapter) in enumerate(adapters):
        c, j = row[i]
        fits = clustering.fits[c]
        packed.append(
            CompressedAdapter(
                name=name,
                cluster=c,
                cores={m: fits[m].cores[j].float().cpu().clone() for m in modules},
                source_ranks={m: adapter.modules[m].rank for m in modules},
                source_scalings={m: float(adapter.modules[m].scaling) for m in modules},
                errors={m: float(fits[m].errors[j]) for m in modules},
            )
        )
    return Compression(mode, reference.base_model, adapters[0][1].config.target_modules, clusters, packed)


def _reference_of(compression: Compression) -> _Reference:
    if not compression.clusters:
        raise CompressionError("no_adapters", "the compression has no clusters")
    return _Reference(
        source="the compression",
        base_model=compression.base_model,
        target_modules=_targets(compression.target_modules),
        shapes={module: basis.shape for module, basis in compression.clusters[0].bases.items()},
    )


def project(
    compression: Compression,
    name: str,
    adapter: LoraAdapter,
    *,
    device: str | torch.device = "auto",
    audit: bool = False,
) -> CompressedAdapter:
    """The fast path for one new adapter: its cores ``S = U^T W V`` on the existing bases of the cluster that
    reconstructs it best, with its errors. No refit, O(d r R) per module and cluster.

    Raises ``CompressionError("incompatible_adapters")`` when the adapter does not match the compression's
    base model, target modules, modules or shapes.
    """
    _check(_reference_of(compression), name, adapter)
    dev = _device(device)
    modules = sorted(compression.clusters[0].bases)
    mode = Mode(compression.mode)
    with exact_float32():
        stacks = {m: stack_modules([adapter.modules[m]], device=dev) for m in modules}
        cluster_bases = [
            {m: ModuleBasis(c.bases[m].u.to(dev), c.bases[m].v.to(dev)) for m in modules} for c in compression.clusters
        ]
        best = int(assignment_errors(stacks, cluster_bases, mode)[0].argmin())
        cores, errors = {}, {}
        for m in modules:
            core = project_cores(stacks[m], cluster_bases[best][m], mode)
            dtype = torch.float64 if audit else torch.float32
            errors[m] = float(relative_errors(stacks[m], cluster_bases[best][m], core, mode, dtype=dtype)[0])
            cores[m] = core[0].float().cpu().clone()
    return CompressedAdapter(
        name=name,
        cluster=best,
        cores=cores,
        source_ranks={m: adapter.modules[m].rank for m in modules},
        source_scalings={m: float(adapter.modules[m].scaling) for m in modules},
        errors=errors,
    )


def reconstruction_errors(
    compression: Compression,
    name: str,
    adapter: LoraAdapter,
    *,
    device: str | torch.device = "auto",
    audit: bool = False,
) -> dict[str, float]:
    """Module -> relative error of the STORED compressed form of ``name`` against the original ``adapter``
    (stable residual formula): what a verification after a round trip through storage checks.

    Raises ``KeyError`` for a name the compression does not hold, ``CompressionError`` with
    ``incompatible_adapters`` when the adapter does not match the compression, and ``basis_mismatch`` when a
    stored core does not fit its cluster's bases.
    """
    compressed = compression.adapter(name)
    _check(_reference_of(compression), name, adapter)
    dev = _device(device)
    mode = Mode(compression.mode)
    errors = {}
    with exact_float32():
        for module in sorted(compressed.cores):
            basis = compression.basis(compressed, module)
            core = compressed.cores[module]
            expected = (basis.rank, basis.rank) if mode == Mode.FULL else (basis.rank,)
            if tuple(core.shape) != expected:
                raise CompressionError(
                    "basis_mismatch",
                    f"adapter {name!r} module {module}: core of shape {tuple(core.shape)} for bases of rank "
                    f"{basis.rank} ({mode.value} cores are {expected})",
                    adapter=name,
                    module=module,
                )
            work = ModuleBasis(basis.u.to(dev), basis.v.to(dev))
            stack = stack_modules([adapter.modules[module]], device=dev)
            dtype = torch.float64 if audit else torch.float32
            errors[module] = float(relative_errors(stack, work, core.to(dev)[None], mode, dtype=dtype)[0])
    return errors
