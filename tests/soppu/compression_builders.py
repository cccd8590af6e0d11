"""Compressions built by hand, independent of the solver, for the compressed format's, the export's, the
verifier's and distillation's tests: random orthonormal bases with random cores, or an exact compression of real
adapters (U, V spanning every adapter's column/row space, so ``U S_i V^T = W_i``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from soppu.adapter import LoraAdapter, read_adapter
from soppu.compression.model import Cluster, CompressedAdapter, Compression, Mode, ModuleBasis

Q = "model.layers.0.self_attn.q_proj"
V = "model.layers.0.self_attn.v_proj"
TOY_SHAPES = {Q: (16, 16), V: (8, 16)}
# The example fixture's tiny Llama: hidden 128, 4 heads, 2 KV heads (so v_proj is 64 x 128), 2 layers.
EXAMPLE_SHAPES = {
    f"model.layers.{layer}.self_attn.{name}": shape
    for layer in range(2)
    for name, shape in (("q_proj", (128, 128)), ("v_proj", (64, 128)))
}


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen))[0]


def random_compression(
    mode: Mode = Mode.FULL,
    *,
    shapes: dict[str, tuple[int, int]] = TOY_SHAPES,
    ranks: dict[str, int] | None = None,
    clusters: int = 1,
    adapters: int = 3,
    seed: int = 0,
) -> Compression:
    """Random orthonormal bases and random cores; adapter i goes to cluster i % clusters."""
    gen = torch.Generator().manual_seed(seed)
    ranks = ranks or dict.fromkeys(shapes, 4)
    built = []
    for _ in range(clusters):
        bases = {
            m: ModuleBasis(_orthonormal(o, ranks[m], gen), _orthonormal(i, ranks[m], gen))
            for m, (o, i) in shapes.items()
        }
        built.append(Cluster(bases))
    members = []
    for index in range(adapters):
        cores = {m: torch.randn((ranks[m],) * (2 if mode is Mode.FULL else 1), generator=gen) for m in shapes}
        members.append(
            CompressedAdapter(
                name=f"user-{index:03d}",
                cluster=index % clusters,
                cores=cores,
                source_ranks=dict.fromkeys(shapes, 8),
                source_scalings=dict.fromkeys(shapes, 2.0),
                errors={m: 0.1 * (index + 1) for m in shapes},
            )
        )
    return Compression(mode, "toy/base-model", ("q_proj", "v_proj"), built, members)


def exact_compression(adapters: dict[str, LoraAdapter], base_model: str | None = None) -> Compression:
    """A lossless JD-Full compression: per module U = qr([B_1 .. B_N]), V = qr([A_1^T .. A_N^T]), so every
    W_i = s_i B_i A_i lies in span(U) x span(V) and S_i = U^T W_i V gives U S_i V^T = W_i."""
    first = next(iter(adapters.values()))
    bases = {}
    for module in first.modules:
        u = torch.linalg.qr(torch.cat([a.modules[module].b for a in adapters.values()], dim=1))[0]
        v = torch.linalg.qr(torch.cat([a.modules[module].a.T for a in adapters.values()], dim=1))[0]
        bases[module] = ModuleBasis(u, v)
    members = []
    for name, adapter in adapters.items():
        cores = {}
        for m, lora in adapter.modules.items():
            cores[m] = lora.scaling * (bases[m].u.T @ lora.b) @ (lora.a @ bases[m].v)
        ranks = {m: lora.rank for m, lora in adapter.modules.items()}
        scalings = {m: lora.scaling for m, lora in adapter.modules.items()}
        members.append(CompressedAdapter(name, 0, cores, ranks, scalings, dict.fromkeys(cores, 0.0)))
    return Compression(Mode.FULL, base_model, first.config.target_modules, [Cluster(bases)], members)


def example_adapters(examples_dir: Path) -> tuple[dict[str, LoraAdapter], str]:
    manifest = json.loads((examples_dir / "users.json").read_text())
    adapters = {user["user_id"]: read_adapter(examples_dir / user["adapter"]) for user in manifest["users"]}
    return adapters, manifest["base_model_id"]
