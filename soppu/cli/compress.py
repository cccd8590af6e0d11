"""``soppu compress``, ``soppu verify`` and ``soppu export-peft``: the client-side compression path.

``compress`` reads and validates adapters, fits shared bases (optionally in clusters), writes the compressed
artifacts (``bases-*.safetensors``, ``cores/<name>.safetensors``, ``compression.json``) with a JSON report and a
PNG plot of the errors, and, when a base model is given, runs the behaviour check (the quality gate).
``verify`` re-checks an existing compression against the original adapters. ``export-peft`` writes the PEFT
form of compressed adapters, which peft and LoRAX load unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soppu.cli.inputs import DTYPES, load_probes, read_named_adapters
from soppu.cli.tables import print_table
from soppu.registry.policy import GateThresholds
from soppu.verify.behaviour import BehaviourThresholds

if TYPE_CHECKING:
    from soppu.adapter import LoraAdapter
    from soppu.compression import Compression
    from soppu.registry.results import GateVerdict
    from soppu.verify.behaviour import BehaviourReport

__all__ = ["add_parsers"]

REPORT_NAME = "report.json"
PLOT_NAME = "report.png"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _add_behaviour_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("behaviour check (runs when --base-model is given)")
    group.add_argument("--base-model", type=Path, help="local Hugging Face model directory the adapters belong to")
    group.add_argument(
        "--probes", type=Path, help="probe prompts: a text file (one per line), a JSON list, or an examples users.json"
    )
    group.add_argument("--max-new-tokens", type=_positive_int, default=8, help="greedy tokens compared per probe")
    gate = BehaviourThresholds()  # the defaults are defined (and explained) once, there
    group.add_argument("--max-kl-mean", type=float, default=gate.max_kl_mean, help="largest mean KL (nats) that passes")
    group.add_argument(
        "--max-kl-max", type=float, default=gate.max_kl_max, help="largest KL at any position that passes"
    )
    group.add_argument(
        "--min-agreement", type=float, default=gate.min_agreement, help="smallest token agreement passing"
    )
    group.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to compute")


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    formatter = argparse.ArgumentDefaultsHelpFormatter
    compress = subparsers.add_parser(
        "compress",
        help="compress adapters jointly into shared bases plus per-adapter cores",
        description="Compress PEFT LoRA adapters jointly (joint diagonalization): one shared basis per module, "
        "a tiny core per adapter. Writes bases-*.safetensors, cores/<name>.safetensors, compression.json, "
        f"{REPORT_NAME} and {PLOT_NAME} into OUT. With --base-model it also checks that every adapter still "
        "behaves the same, and exits 1 if any does not.",
        formatter_class=formatter,
    )
    compress.add_argument("adapters", nargs="+", type=Path, metavar="ADAPTER", help="adapter directory or archive")
    compress.add_argument("-o", "--out", type=Path, required=True, help="output directory")
    compress.add_argument("--mode", choices=("full", "diag"), default="full", help="JD-Full (R x R cores) or JD-Diag")
    rank = compress.add_mutually_exclusive_group()
    rank.add_argument("--rank", type=_positive_int, help="shared rank R for every module (default: 16)")
    rank.add_argument("--max-error", type=_positive_float, help="per module, the smallest R whose worst error fits")
    rank.add_argument("--ratio", type=_positive_float, help="per module, the largest R reaching this compression ratio")
    compress.add_argument("--clusters", type=_positive_int, default=1, help="number of clusters K (Lloyd-style)")
    compress.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="storage dtype of the artifacts")
    compress.add_argument("--seed", type=int, default=0, help="seed of the solver's initialisation")
    compress.add_argument("--audit", action="store_true", help="recompute the reported errors in float64")
    compress.add_argument("--quiet", action="store_true", help="no progress output")
    _add_behaviour_options(compress)
    compress.set_defaults(handler=_compress)

    verify = subparsers.add_parser(
        "verify",
        help="re-check a compression against the original adapters (errors and behaviour)",
        description="Recompute each adapter's reconstruction error from its original and, with --base-model, run "
        "the behaviour check. Exits 1 if any adapter fails.",
        formatter_class=formatter,
    )
    verify.add_argument("compressed", type=Path, help="a directory written by `soppu compress`")
    verify.add_argument("adapters", nargs="+", type=Path, metavar="ADAPTER", help="the original adapters")
    verify.add_argument("--max-error", type=_positive_float, help="fail any adapter whose worst module error is larger")
    verify.add_argument("--report", type=Path, help="also write the JSON report here")
    verify.add_argument("--quiet", action="store_true", help="no progress output")
    _add_behaviour_options(verify)
    gate = verify.add_argument_group("the service's quality gate, client side (with --base-model)")
    gate.add_argument(
        "--user-probes",
        type=Path,
        help="your probes (a JSON list, or one prompt per line): run the compressor's gate, which requires the same "
        "answer on every probe and the adapter's effect kept on text the original writes itself",
    )
    gate.add_argument("--max-kl-lost", type=float, default=GateThresholds.max_kl_lost, help="the gate's kl_lost bound")
    gate.add_argument(
        "--gate-agreement", type=float, default=GateThresholds.min_agreement, help="the gate's agreement bound"
    )
    verify.set_defaults(handler=_verify)

    export = subparsers.add_parser(
        "export-peft",
        help="write compressed adapters as plain PEFT LoRA (what peft and LoRAX load)",
        description="Write each compressed adapter as PEFT LoRA in the form LoRAX 0.12.1 serves exactly: B' = U S, "
        "A' = V^T, zero-padded to a rank of 8, 16, 32, 64 or 128, r = lora_alpha (scale 1). Outputs match U S V^T "
        "to the --dtype's rounding; the files are that rank over r times larger than the original adapter. Use "
        "the dtype LoRAX serves the base in (its config.json torch_dtype; float32 is served as float16).",
        formatter_class=formatter,
    )
    export.add_argument("compressed", type=Path, help="a directory written by `soppu compress`")
    export.add_argument("-o", "--out", type=Path, required=True, help="one sub-directory per adapter is written here")
    export.add_argument("--adapter", action="append", dest="names", help="only this adapter (repeatable)")
    export.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the exported factors")
    export.set_defaults(handler=_export)


def _say(quiet: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr)

    return say


def _base_model(args: argparse.Namespace) -> tuple[Any, Any] | None:
    """(model, tokenizer) of ``--base-model``, loaded once for every check that runs it; None without one."""
    if args.base_model is None:
        return None
    from soppu.models import load_causal_lm

    return load_causal_lm(args.base_model, args.device)


def _behaviour(
    args: argparse.Namespace,
    compression: Compression,
    originals: Sequence[tuple[str, LoraAdapter]],
    base: tuple[Any, Any] | None,
) -> BehaviourReport | None:
    """The behaviour report, or None when no base model was given."""
    if base is None:
        return None
    from soppu.compression.export import to_lora
    from soppu.verify.behaviour import check_behaviour

    thresholds = BehaviourThresholds(args.max_kl_mean, args.max_kl_max, args.min_agreement)
    probes = load_probes(args.probes)
    _say(args.quiet)(f"behaviour check: {len(originals)} adapters x {len(probes)} probes on {args.base_model}")
    model, tokenizer = base
    compressed = {a.name: to_lora(compression, a) for a in compression.adapters}
    return check_behaviour(
        model,
        tokenizer,
        dict(originals),
        compressed,
        probes,
        max_new_tokens=args.max_new_tokens,
        thresholds=thresholds,
    )


def _gate(
    args: argparse.Namespace,
    compression: Compression,
    originals: Sequence[tuple[str, LoraAdapter]],
    errors: dict[str, dict[str, float]],
    base: tuple[Any, Any] | None,
) -> dict[str, GateVerdict]:
    """The compressor's gate on every adapter (empty without ``--user-probes``): what an upload with these
    probes would meet."""
    if args.user_probes is None or base is None:
        return {}
    from soppu.adapter.probes import encode_probes, parse_probes
    from soppu.compression.export import to_lora
    from soppu.registry.policy import QualityGate

    # Read as --probes files are, then held to the upload's rules: 1 to 32 prompts, none blank or too long.
    probes = parse_probes(encode_probes(load_probes(args.user_probes)))
    thresholds = GateThresholds(max_kl_lost=args.max_kl_lost, min_agreement=args.gate_agreement)
    gate = QualityGate(thresholds=thresholds, fitting=None, model=base)
    _say(args.quiet)(f"quality gate: {len(originals)} adapters x {len(probes)} probes on {args.base_model}")
    results = {}
    for name, original in originals:
        result = gate.check(original, to_lora(compression, compression.adapter(name)), errors[name], probes)
        results[name] = result
        verdict = "passes" if result.passed else "FAILS: " + "; ".join(result.reasons)
        print(f"gate: {name} {verdict}")
    return results


def _summary(compression: Compression, errors: dict[str, dict[str, float]], behaviour: BehaviourReport | None) -> None:
    header = ["adapter", "cluster", "R", "worst error", "mean error"]
    if behaviour is not None:
        header += ["KL mean", "agreement", "behaviour"]
    rows = []
    for adapter in compression.adapters:
        ranks = sorted({compression.basis(adapter, m).rank for m in adapter.cores})
        values = list(errors[adapter.name].values())
        row = [
            adapter.name,
            str(adapter.cluster),
            str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}..{ranks[-1]}",
            f"{max(values):.4f}",
            f"{sum(values) / len(values):.4f}",
        ]
        if behaviour is not None:
            b = behaviour.adapter(adapter.name)
            row += [f"{b.kl_mean:.4f}", f"{b.agreement:.2f}", "pass" if b.passed else "FAIL " + ",".join(b.failures)]
        rows.append(row)
    print_table(header, rows)


def _compress(args: argparse.Namespace) -> int:
    from soppu.compression import Mode, RankPolicy, compress
    from soppu.compression.accounting import account
    from soppu.compression.format import bases_file_name, core_file_name, write_compression
    from soppu.verify.plot import plot_errors
    from soppu.verify.report import error_report, write_report

    if args.max_error is not None:
        policy = RankPolicy.for_error(args.max_error)
    elif args.ratio is not None:
        policy = RankPolicy.for_ratio(args.ratio)
    else:
        policy = RankPolicy.fixed(args.rank or 16)
    named = read_named_adapters(args.adapters, progress=not args.quiet)
    compression = compress(
        named,
        mode=Mode(args.mode),
        policy=policy,
        clusters=args.clusters,
        device=args.device,
        seed=args.seed,
        audit=args.audit,
        progress=_say(args.quiet),
    )
    dtype = DTYPES[args.dtype]
    written = write_compression(compression, args.out, dtype=dtype)
    sizes = {path.relative_to(args.out).as_posix(): path.stat().st_size for path in written}
    accounting = account(
        compression,
        [adapter for _, adapter in named],
        dtype=dtype,
        bases_file_bytes=[sizes[bases_file_name(k)] for k in range(len(compression.clusters))],
        core_file_bytes=[sizes[core_file_name(a.name)] for a in compression.adapters],
    )
    behaviour = _behaviour(args, compression, named, _base_model(args))
    report = {"errors": error_report(compression), "accounting": accounting}
    if behaviour is not None:
        report["behaviour"] = behaviour.to_dict()
    write_report(report, args.out / REPORT_NAME)
    plot_errors(compression, args.out / PLOT_NAME)

    _summary(compression, {a.name: a.errors for a in compression.adapters}, behaviour)
    ratio = accounting["ratio"]
    print(
        f"\n{len(named)} adapters -> {len(compression.clusters)} shared basis set(s), mode {compression.mode.value}: "
        f"{ratio['parameters']:.2f}x fewer parameters, {ratio['bytes']:.2f}x fewer bytes "
        f"({accounting['compressed']['bytes']:,} vs {accounting['original']['bytes']:,})"
    )
    print(f"wrote {args.out} ({len(written)} files), report {args.out / REPORT_NAME}, plot {args.out / PLOT_NAME}")
    if behaviour is not None and not behaviour.passed:
        failed = [a.name for a in behaviour.adapters if not a.passed]
        print(f"behaviour check FAILED for {len(failed)} adapter(s): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _verify(args: argparse.Namespace) -> int:
    from soppu.compression import reconstruction_errors
    from soppu.compression.format import read_compression

    compression = read_compression(args.compressed)
    named = read_named_adapters(args.adapters, progress=not args.quiet)
    known = {a.name for a in compression.adapters}
    unknown = [name for name, _ in named if name not in known]
    if unknown:
        print(
            f"error: not in {args.compressed}: {', '.join(unknown)} (adapters: {', '.join(sorted(known))})",
            file=sys.stderr,
        )
        return 2
    if args.user_probes is not None and args.base_model is None:
        print("error: --user-probes needs --base-model (the gate runs the model)", file=sys.stderr)
        return 2
    errors = {name: reconstruction_errors(compression, name, adapter) for name, adapter in named}
    checked = dataclasses.replace(compression, adapters=[a for a in compression.adapters if a.name in errors])
    base = _base_model(args)
    behaviour = _behaviour(args, checked, named, base)
    _summary(checked, errors, behaviour)
    gated = _gate(args, checked, named, errors, base)
    too_far = [name for name, e in errors.items() if args.max_error is not None and max(e.values()) > args.max_error]
    failed = sorted(
        set(too_far)
        | ({a.name for a in behaviour.adapters if not a.passed} if behaviour else set())
        | {name for name, result in gated.items() if not result.passed}
    )
    if args.report is not None:
        report: dict[str, Any] = {"errors": errors, "failed": failed}
        if behaviour is not None:
            report["behaviour"] = behaviour.to_dict()
        if gated:
            report["gate"] = {name: result.to_dict() for name, result in gated.items()}
        args.report.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"\n{len(named)} adapter(s) verified")
    return 0


def _export(args: argparse.Namespace) -> int:
    from soppu.compression.export import write_peft_export
    from soppu.compression.format import read_compression

    compression = read_compression(args.compressed)
    names = args.names or [a.name for a in compression.adapters]
    known = {a.name for a in compression.adapters}
    unknown = [name for name in names if name not in known]
    if unknown:
        print(f"error: not in {args.compressed}: {', '.join(unknown)}", file=sys.stderr)
        return 2
    for name in names:
        path = write_peft_export(compression, name, args.out / name, dtype=DTYPES[args.dtype])
        print(f"{name}: {path}")
    return 0
