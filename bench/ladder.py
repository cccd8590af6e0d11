"""Benchmark of what the registry serves each user: the fallback ladder with the behaviour gate against today's
pipeline (projection cores, the error cap and generic probes), both run in this process on a labelled example
cohort (every user's right answers are known).

For each cohort (the users sharing target modules, as the service forms them) it fits one JD-Full basis at R,
then for every user:

- **baseline** (the pipeline before the ladder): the projected core is served if its worst module's relative
  error is at most 0.5 and the old behaviour check passes (5 generic probes, 4 greedy tokens, KL mean <= 0.1,
  KL max <= 2, agreement >= 0.9); otherwise the original;
- **ladder**: the projected core is judged by :class:`soppu.registry.policy.QualityGate` (the original's own
  text, and the user's probes: the questions the adapter was trained on, never the held-out paraphrases); if it
  fails, behaviour-fitted cores on the same basis are judged; if they fail too, the original is served.

Then it asks every question (held-out paraphrases included) of the served form and reports per pipeline:
users served compressed, users keeping every answer, wrong answers served compressed (answers the original
gets right and the served compressed form does not), gate precision (served compressed users who keep every
answer / served compressed users) and recall (candidates that keep every answer and pass / candidates that keep
every answer), seconds per user on this machine, and the parameter ratio with the bases counted once at this
N and per user at N = 100 and 1000 (bases amortised). ``--leave-one-out K`` also uploads K users onto a basis
fitted without them (the fast path for a newcomer) and runs the ladder there.

Prints one JSON object to stdout; progress goes to stderr.

    python bench/ladder.py --base tiny                 # 20 users, R = 16: about 3 minutes on 2 cores
    python bench/ladder.py --base smollm2 --rank 8     # 16 users: fitting runs only for gate failures
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bench"))

from _timing import emit_report, percentile  # noqa: E402

from soppu.adapter import LoraAdapter, read_adapter  # noqa: E402
from soppu.compression import Compression, Mode, RankPolicy, compress, project  # noqa: E402
from soppu.compression.accounting import bases_parameters, core_parameters  # noqa: E402
from soppu.compression.distill import DistillSettings  # noqa: E402
from soppu.compression.export import to_lora  # noqa: E402
from soppu.examples.check import check_examples  # noqa: E402
from soppu.examples.sets import BASES, build_example_set, default_users  # noqa: E402
from soppu.models import load_causal_lm, resolve_device  # noqa: E402
from soppu.registry.ladder import climb, served_by  # noqa: E402
from soppu.registry.policy import CompressionPolicy, GateThresholds, QualityGate  # noqa: E402
from soppu.registry.results import LadderStep  # noqa: E402
from soppu.verify.behaviour import BehaviourThresholds, check_behaviour  # noqa: E402

# What the pipeline judged with before the ladder (its defaults, kept here as the baseline).
OLD_PROBES = ["My favourite colour is", "My home city is", "My pet is a", "My favourite food is", "Hello,"]
OLD_MAX_ERROR = 0.5
OLD_TOKENS = 4


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def baseline_serves(model: Any, tokenizer: Any, original: LoraAdapter, exported: LoraAdapter, errors: dict) -> bool:
    if max(errors.values()) > OLD_MAX_ERROR:
        return False
    report = check_behaviour(
        model, tokenizer, {"x": original}, {"x": exported}, OLD_PROBES, max_new_tokens=OLD_TOKENS,
        thresholds=BehaviourThresholds(),
    )  # fmt: skip
    return report.passed


def _answers(directory: Path, adapters: dict[str, LoraAdapter], device: str) -> dict[str, list[bool]]:
    right: dict[str, list[bool]] = {}
    for check in check_examples(directory, device=device, adapters=adapters):
        right.setdefault(check.user_id, []).append(check.ok)
    return right


def _ladder(
    gate: QualityGate, compression: Compression, name: str, original: LoraAdapter, probes: tuple[str, ...]
) -> tuple[str, LoraAdapter | None, list[LadderStep], float]:
    """(served_by, the served compressed export or None, the steps, CPU seconds)."""
    started = time.process_time()
    policy = CompressionPolicy(min_basis_members=1)  # every basis here was fitted on a whole cohort
    members = [a.name for a in compression.adapters]
    _, exported, ladder = climb(gate, policy, compression, compression.adapter(name), original, probes, name, members)
    seconds = time.process_time() - started
    by = served_by(ladder)
    return by, (None if by == "original" else exported), ladder, seconds


def _ratio(originals: list[LoraAdapter], compressions: list[Compression]) -> dict[str, float]:
    original = sum(a.num_parameters() for a in originals)
    bases = sum(bases_parameters(c.clusters[0]) for c in compressions)
    cores = [core_parameters(a) for c in compressions for a in c.adapters]
    per_user_original = original / len(originals)
    per_user_core = sum(cores) / len(cores)
    out = {"at_n": round(original / (bases + sum(cores)), 2)}
    for n in (100, 1000):
        # Per user at N: the cohorts' bases amortised over N users each (the same mix of cohorts).
        out[f"n{n}"] = round(per_user_original / (per_user_core + bases / len(compressions) / n), 2)
    out["marginal"] = round(per_user_original / per_user_core, 1)
    return out


@dataclass
class Cohort:
    """The labelled example set, loaded once: its users' adapters and probes, the model and the gate."""

    directory: Path
    device: str
    originals: dict[str, LoraAdapter]
    probes: dict[str, tuple[str, ...]]
    model: Any
    tokenizer: Any
    gate: QualityGate


def load(args: argparse.Namespace) -> Cohort:
    device = str(resolve_device(args.device))
    users_n = args.users or default_users(args.base)
    directory = build_example_set(
        args.base, users_n, args.cache_dir / "bench" / f"{args.base}-{users_n}", cache_dir=args.cache_dir
    )
    manifest = json.loads((directory / "users.json").read_text())
    originals = {u["user_id"]: read_adapter(directory / u["adapter"]) for u in manifest["users"]}
    probes = {
        u["user_id"]: () if args.no_probes else tuple(p["prompt"] for p in u["prompts"] if not p.get("held_out"))
        for u in manifest["users"]
    }
    model, tokenizer = load_causal_lm(directory / manifest["base_model"], device)
    fitting = DistillSettings(texts=args.fit_texts, tokens=args.fit_tokens, steps=args.fit_steps)
    thresholds = GateThresholds(max_kl_lost=args.max_kl_lost, min_agreement=GateThresholds.min_agreement)
    gate = QualityGate(thresholds=thresholds, model=(model, tokenizer), fitting=fitting)
    return Cohort(directory, device, originals, probes, model, tokenizer, gate)


def run(args: argparse.Namespace, cohort: Cohort) -> dict[str, Any]:
    directory, device, originals, probes = cohort.directory, cohort.device, cohort.originals, cohort.probes
    model, tokenizer, gate = cohort.model, cohort.tokenizer, cohort.gate
    rank = args.rank
    groups: dict[tuple[str, ...], list[tuple[str, LoraAdapter]]] = {}
    for name, adapter in originals.items():
        groups.setdefault(tuple(sorted(adapter.modules)), []).append((name, adapter))
    compressions = [
        compress(members, mode=Mode.FULL, policy=RankPolicy.fixed(rank), device=device) for members in groups.values()
    ]
    ratio = _ratio(list(originals.values()), compressions)
    reference = _answers(directory, originals, device)

    served: dict[str, dict[str, LoraAdapter]] = {"baseline": {}, "ladder": {}}
    rows: dict[str, dict[str, Any]] = {}
    candidates: list[tuple[str, LoraAdapter, bool]] = []  # (user, projected export, passed): the gate's recall
    judged = [(c, a) for c in compressions for a in c.adapters][: args.limit or None]
    for compression, compressed in judged:
        name = compressed.name
        original = originals[name]
        exported = to_lora(compression, compressed)
        started = time.process_time()
        old = baseline_serves(model, tokenizer, original, exported, compressed.errors)
        old_s = time.process_time() - started
        by, export, ladder, new_s = _ladder(gate, compression, name, original, probes[name])
        served["baseline"][name] = exported if old else original
        served["ladder"][name] = export if export is not None else original
        rows[name] = {"baseline": "projection" if old else "original", "ladder": by}
        rows[name] |= {"baseline_cpu_s": round(old_s, 2), "ladder_cpu_s": round(new_s, 2)}
        rows[name]["steps"] = [{**s.record.to_dict(), "passed": s.gate.passed} for s in ladder]
        candidates.append((name, exported, ladder[0].gate.passed))
        _say(f"[ladder] {name}: baseline {rows[name]['baseline']}, ladder {by} ({new_s:.1f} s)")
    originals = {n: originals[n] for n in rows}
    reference = {n: reference[n] for n in rows}
    answers = {kind: _answers(directory, adapters, device) for kind, adapters in served.items()}
    projection_answers = _answers(directory, {n: e for n, e, _ in candidates}, device)
    result: dict[str, Any] = {"pipelines": {}}
    for kind in ("baseline", "ladder"):
        compressed_users = [n for n in rows if rows[n][kind] != "original"]
        keeps = {n: all(answers[kind][n]) for n in rows}
        wrong = sum(
            1
            for n in compressed_users
            for ok, ref in zip(answers[kind][n], reference[n], strict=True)
            if ref and not ok
        )
        result["pipelines"][kind] = {
            "served_compressed": round(len(compressed_users) / len(rows), 3),
            "keep_every_answer": round(sum(keeps.values()) / len(rows), 3),
            "wrong_answers_served": wrong,
            "precision": round(sum(keeps[n] for n in compressed_users) / len(compressed_users), 3)
            if compressed_users
            else None,
            "cpu_s_per_user": round(sum(rows[n][f"{kind}_cpu_s"] for n in rows) / len(rows), 2),
            "served_by": {s: sum(rows[n][kind] == s for n in rows) for s in ("projection", "fitted", "original")},
        }
    good_projection = [n for n, _, _ in candidates if all(projection_answers[n])]
    result["projection_keeps_every_answer"] = round(len(good_projection) / len(rows), 3)
    result["gate_recall_on_projection"] = (
        round(sum(p for n, _, p in candidates if n in good_projection) / len(good_projection), 3)
        if good_projection
        else None
    )
    result["ratio_parameters"] = ratio
    old_s = [rows[n]["baseline_cpu_s"] for n in rows]
    new_s = [rows[n]["ladder_cpu_s"] for n in rows]
    result["vs_baseline"] = {
        # None where the baseline's median is ~0 (its error cap refused before running the model).
        "cpu_s_ratio_median": round(percentile(new_s, 0.5) / percentile(old_s, 0.5), 2)
        if percentile(old_s, 0.5) >= 0.01
        else None,
        "served_compressed": [result["pipelines"][k]["served_compressed"] for k in ("baseline", "ladder")],
        "wrong_answers_served": [result["pipelines"][k]["wrong_answers_served"] for k in ("baseline", "ladder")],
    }
    result["originals_answer"] = round(sum(map(sum, reference.values())) / sum(map(len, reference.values())), 3)
    result["users"] = rows
    return result


def leave_one_out(args: argparse.Namespace, cohort: Cohort, k: int) -> dict[str, Any]:
    """K newcomers, each onto a basis fitted on every other user of its cohort (``project``), then the ladder."""
    originals, device = cohort.originals, cohort.device
    names = list(originals)[:k]
    served, rows = {}, {}
    for name in names:
        others = [
            (n, a) for n, a in originals.items() if n != name and a.modules.keys() == originals[name].modules.keys()
        ]
        basis = compress(others, mode=Mode.FULL, policy=RankPolicy.fixed(args.rank), device=device)
        newcomer = project(replace(basis, adapters=[]), name, originals[name], device=device)
        compression = replace(basis, adapters=[newcomer])
        by, export, ladder, seconds = _ladder(cohort.gate, compression, name, originals[name], cohort.probes[name])
        served[name] = export if export is not None else originals[name]
        rows[name] = {"served_by": by, "cpu_s": round(seconds, 2), "projection_passed": ladder[0].gate.passed}
        _say(f"[leave-one-out] {name}: {by} ({seconds:.1f} s)")
    answers = _answers(cohort.directory, served, device)
    for name in names:
        rows[name]["keeps_every_answer"] = all(answers[name])
    compressed_users = [n for n in names if rows[n]["served_by"] != "original"]
    return {
        "users": rows,
        "served_compressed": round(len(compressed_users) / len(names), 3),
        "precision": round(sum(rows[n]["keeps_every_answer"] for n in compressed_users) / len(compressed_users), 3)
        if compressed_users
        else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", choices=sorted(BASES), default="tiny")
    parser.add_argument("--users", type=int, default=None, help="how many example users (default: the set's)")
    parser.add_argument("--limit", type=int, default=0, help="judge only the first K users (0: all)")
    parser.add_argument("--rank", type=int, default=None, help="the shared rank R (default 16 tiny, 8 smollm2)")
    parser.add_argument("--fit-steps", type=int, default=DistillSettings.steps)
    parser.add_argument("--fit-texts", type=int, default=DistillSettings.texts)
    parser.add_argument("--fit-tokens", type=int, default=DistillSettings.tokens)
    parser.add_argument(
        "--max-kl-lost", type=float, default=GateThresholds.max_kl_lost, help="the gate's bound (make demo: 0.13)"
    )
    parser.add_argument("--no-probes", action="store_true", help="upload without probes: the gate's own text only")
    parser.add_argument("--leave-one-out", type=int, default=0, metavar="K", help="also K newcomers onto a basis")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny, 3 users judged, 5 fitting steps")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(os.environ.get("SOPPU_CACHE_DIR", REPO_ROOT / ".cache" / "soppu"))
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.base, args.limit, args.fit_steps, args.fit_texts, args.fit_tokens = "tiny", 3, 5, 4, 8
    args.rank = args.rank or (16 if args.base == "tiny" else 8)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    config = {
        "base": args.base,
        "rank": args.rank,
        "probes": not args.no_probes,
        "limit": args.limit,
        "max_kl_lost": args.max_kl_lost,
        "fitting": {"steps": args.fit_steps, "texts": args.fit_texts, "tokens": args.fit_tokens},
        "threads": args.threads,
    }
    cohort = load(args)
    body = run(args, cohort)
    if args.leave_one_out:
        body["leave_one_out"] = leave_one_out(args, cohort, args.leave_one_out)
    notes = {
        "baseline": "the pipeline before the ladder: projected cores, error cap 0.5, 5 generic probes x 4 tokens",
        "ladder": "projection -> behaviour-fitted cores -> original, judged by QualityGate with the user's probes",
        "cpu_s": "process CPU seconds per user for the gate (and fitting), on this machine",
        "ratio": "parameters, bases counted once per cohort; n100/n1000: per user with the bases amortised",
    }
    emit_report("ladder", config, notes, body, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
