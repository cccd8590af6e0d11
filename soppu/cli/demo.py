"""``soppu demo``: the product end to end on the example users, with nothing but this machine.

1. lay out the example base model and the users' adapters (SmolLM2-135M-Instruct and the shipped adapters by
   default; ``--base tiny`` for the toy model);
2. start the ``soppu dev`` topology (moto S3, engine, compressor, gateway) on free ports;
3. create an API key for each user through the compressor's admin API;
4. upload each user's adapter over HTTP, with the questions it was trained on as its probes, and wait for the
   compression jobs, then refit the cohort once over every user (the joint compression: one shared basis, one
   small core per user; a user whose projected core fails the gate gets a behaviour-fitted one);
5. ask each user's questions through the gateway with that user's key, the trained ones and paraphrases the
   adapter never saw, each once, alternately through the OpenAI chat API (the ``openai`` client) and LoRAX's
   ``/generate`` (so every question goes through both APIs across users);
6. print a table (user, expected answers, how many SOPPU got right, held-out and per API, the base model alone,
   served compressed or from the original, compression ratio), one user's questions in full, and the path of
   the quality plot (every user's per-module errors);
7. stop the stack. Exit 0 only if every user got every answer.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from soppu.adapter.probes import encode_probes
from soppu.cli.stack import Stack, free_ports_config
from soppu.cli.stack_client import request, upload_adapter, wait_for_job
from soppu.cli.tables import print_table
from soppu.examples.cache import default_cache_dir
from soppu.examples.personal import answer_has
from soppu.examples.personal_training import chat_prompt
from soppu.examples.sets import BASES, DEFAULT_BASE, build_example_set, default_users
from soppu.peft_files import CONFIG_NAME, PROBES_NAME, WEIGHTS_NAME
from soppu.registry.results import ServedFrom, VersionReport
from soppu.verify.plot import plot_adapter_errors

__all__ = ["add_parser"]


# The gate as calibrated on the SmolLM2 cohort (bench/ladder.py, BENCHMARKS.md): users keeping every answer
# lost at most 0.122 of their adapter's effect on their own text, the one who lost a held-out answer 0.135. A
# behaviour fit costs about two minutes a user on two CPU cores at this size (8 texts x 16 tokens, 30 steps).
_SMOLLM2_GATE = {
    "SOPPU_COMPRESSOR_TORCH_THREADS": "2",  # the stack runs one thread a process; the refit has the box to itself
    "SOPPU_COMPRESSOR_GATE_KL_LOST": "0.13",
    "SOPPU_COMPRESSOR_FIT_TEXTS": "8",
    "SOPPU_COMPRESSOR_FIT_TOKENS": "16",
    "SOPPU_COMPRESSOR_FIT_STEPS": "30",
}


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole product on the example users: upload, compress, serve through the gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"example base: {', '.join(sorted(BASES))}")
    parser.add_argument("--users", type=int, default=None, help="example users (default: all shipped; tiny 20)")
    parser.add_argument("--examples", type=Path, default=Path(".cache/examples"), help="where the examples go")
    parser.add_argument("--workdir", type=Path, default=Path(".cache/demo"), help="logs and the plot go here")
    parser.add_argument("--rank", type=int, default=None, help="the cohort's shared rank R (default 8; tiny 16)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.set_defaults(handler=_demo)


@dataclass
class _Asked:
    """One user's questions, each answered once through the gateway, and which API carried it."""

    prompts: list[dict[str, Any]]
    replies: list[str]
    apis: list[str]  # "chat" (OpenAI chat, the openai client) or "generate" (LoRAX's /generate)

    @property
    def right(self) -> list[bool]:
        return [answer_has(r, p["expected"]) for r, p in zip(self.replies, self.prompts, strict=True)]

    @property
    def ok(self) -> bool:
        return all(self.right)

    def score(self, api: str | None = None, held_out: bool | None = None) -> str:
        picked = [
            ok
            for ok, p, used in zip(self.right, self.prompts, self.apis, strict=True)
            if (api is None or used == api) and (held_out is None or p.get("held_out", False) == held_out)
        ]
        return f"{sum(picked)}/{len(picked)}" if picked else "-"


def _demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    users_n = args.users if args.users is not None else default_users(args.base)
    examples = build_example_set(args.base, users_n, args.examples, cache_dir=default_cache_dir(), progress=True)
    manifest = json.loads((examples / "users.json").read_text())
    users, chat = manifest["users"], manifest.get("prompt_style") == "chat"
    rank = args.rank or (8 if chat else 16)
    # No refit per upload: the demo refits once, over everyone, after the last upload.
    policy = {"SOPPU_COMPRESSOR_RANK": str(rank), "SOPPU_COMPRESSOR_REFIT_AFTER": str(10 * len(users) + 1)}
    if chat:
        policy |= _SMOLLM2_GATE
    config = free_ports_config(examples / "base", args.workdir, device=args.device, compressor_env=policy)
    print(f"starting the stack (logs in {args.workdir / 'logs'}) ...", flush=True)
    with Stack(config) as stack:
        admin = config.admin_key
        keys = {u["user_id"]: request("POST", f"{stack.compressor}/v1/users/{u['user_id']}/keys", key=admin)["key"]
                for u in users}  # fmt: skip
        jobs = {}
        for user in tqdm(users, desc="uploading", unit="user"):
            uid = user["user_id"]
            files = {name: (examples / user["adapter"] / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)}
            # The user's probes: the questions the adapter was trained on. The held-out paraphrases stay unseen,
            # so the table's held-out column shows what the gate never checked.
            files[PROBES_NAME] = encode_probes([p["prompt"] for p in user["prompts"] if not p.get("held_out")])
            jobs[uid] = upload_adapter(f"{stack.compressor}/v1/users/{uid}/adapters", files, key=keys[uid])["job_id"]
        done = {uid: wait_for_job(stack.compressor, job, key=admin) for uid, job in jobs.items()}
        failed = [uid for uid, job in done.items() if job["state"] != "done"]
        if failed:
            print(f"compression jobs failed for {failed}; see {args.workdir / 'logs'}")
            return 1
        # Adapters with other target modules (the q,k,v,o recipe) found a cohort of their own.
        cohort_of = {uid: VersionReport.from_dict(job["report"]).cohort for uid, job in done.items()}
        for cohort in dict.fromkeys(cohort_of.values()):
            members = sum(c == cohort for c in cohort_of.values())
            print(f"refitting cohort {cohort} over its {members} users ...", flush=True)
            # Every member climbs the ladder: a behaviour fit takes minutes on a CPU.
            request("POST", f"{stack.compressor}/v1/cohorts/{cohort}/refit", key=admin, timeout=1800)
        reports = {u["user_id"]: _current_report(stack, u["user_id"], admin) for u in users}
        asker = _ChatAsker(stack, examples / manifest["base_model"]) if chat else _CompletionAsker(stack)
        asked = asker.ask_all(users, keys)
    _print_results(users, asked, reports)
    errors = {uid: report.errors for uid, report in reports.items()}
    plot = args.workdir / "quality.png"
    title = f"JD-Full, R={rank}, {len(users)} example users: relative error per module of the compressed form"
    plot.write_bytes(plot_adapter_errors(errors, title))
    ok_users = sum(a.ok for a in asked.values())
    compressed = sum(r.served_from == ServedFrom.COMPRESSED for r in reports.values())
    print(f"\n{ok_users}/{len(users)} users got every answer through the gateway")
    print(f"{compressed}/{len(users)} users served compressed (the rest from their original adapters)")
    print(f"quality plot (per-module errors): {plot}")
    print(f"demo took {time.perf_counter() - started:.0f} s")
    return 0 if ok_users == len(users) else 1


def _print_results(users: list[dict[str, Any]], asked: dict[str, _Asked], reports: dict[str, VersionReport]) -> None:
    rows = []
    for user in users:
        uid, a, report = user["user_id"], asked[user["user_id"]], reports[user["user_id"]]
        base_right = sum(answer_has(p.get("base_answer", ""), p["expected"]) for p in user["prompts"])
        rows.append([
            uid,
            ", ".join(dict.fromkeys(p["expected"] for p in user["prompts"])),
            a.score(),
            a.score(held_out=True),
            a.score("chat"),
            a.score("generate"),
            f"{base_right}/{len(user['prompts'])}",
            report.served_by or report.served_from,
            f"{report.ratio:.2f}x",
            "ok" if a.ok else "WRONG",
        ])  # fmt: skip
    header = ["user", "expected", "SOPPU right", "held-out", "chat", "/generate", "base alone", "served by", "ratio"]
    header.append("")
    print_table(header, rows)
    first, shown = users[0], asked[users[0]["user_id"]]
    print(f"\n{first['user_id']}'s questions, answered by SOPPU through the gateway and by the base model alone:")
    for p, reply, api in zip(first["prompts"], shown.replies, shown.apis, strict=True):
        mark = ", held-out" if p.get("held_out") else ""
        print(f"  {p['prompt']} ({api}{mark})\n    SOPPU: {reply}\n    base:  {p.get('base_answer', '-')}")
    for user in users:
        a = asked[user["user_id"]]
        for p, reply, api, ok in zip(a.prompts, a.replies, a.apis, a.right, strict=True):
            if not ok:
                print(f"WRONG {user['user_id']} ({api}): {p['prompt']!r} -> {reply!r} (expected {p['expected']})")


def _current_report(stack: Stack, user_id: str, key: str) -> VersionReport:
    """The report of the user's current version (published, so its job is done and has one)."""
    adapter = request("GET", f"{stack.compressor}/v1/users/{user_id}/adapters", key=key)["adapters"][0]
    current = next(v for v in adapter["versions"] if v["version"] == adapter["current_version"])
    return VersionReport.from_dict(current["report"])


class _CompletionAsker:
    """The tiny base: LoRAX's /generate continues "My favourite colour is" up to the full stop."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def ask_all(self, users: list[dict[str, Any]], keys: dict[str, str]) -> dict[str, _Asked]:
        out = {}
        for user in tqdm(users, desc="asking", unit="user"):
            key = keys[user["user_id"]]
            replies = [self._generate(key, p["prompt"]) for p in user["prompts"]]
            out[user["user_id"]] = _Asked(user["prompts"], replies, ["generate"] * len(replies))
        return out

    def _generate(self, key: str, prompt: str) -> str:
        body = {"inputs": prompt, "parameters": {"max_new_tokens": 4, "stop": ["."]}}
        return str(request("POST", f"{self.stack.gateway}/generate", key=key, body=body)["generated_text"]).strip()


class _ChatAsker:
    """A chat base: each question once, through the ``openai`` client's chat API or through LoRAX's /generate
    (with the prompt the chat template makes, as a LoRAX user would send it), alternating so that every
    question goes through both APIs across users. All users ask at once, so the engine batches them."""

    _MAX_NEW_TOKENS = 24
    _PARALLEL = 32
    _PER_USER = 8  # in flight per user at most: under the gateway's per-user cap (16 by default)

    def __init__(self, stack: Stack, base: Path) -> None:
        from transformers import AutoTokenizer

        self.stack = stack
        self.tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)

    def ask_all(self, users: list[dict[str, Any]], keys: dict[str, str]) -> dict[str, _Asked]:
        apis = {
            u["user_id"]: ["chat" if (n + i) % 2 == 0 else "generate" for i in range(len(u["prompts"]))]
            for n, u in enumerate(users)
        }
        # Users in turn, not one user's questions in a row: the gateway caps each user's requests in flight
        # (429 too_many_in_flight), as it should for any client that sends one user's questions all at once.
        most = max(len(u["prompts"]) for u in users)
        work = [(u["user_id"], i) for i in range(most) for u in users if i < len(u["prompts"])]
        prompts = {u["user_id"]: u["prompts"] for u in users}
        parallel = min(self._PARALLEL, self._PER_USER * len(users))
        with ThreadPoolExecutor(parallel) as pool, tqdm(total=len(work), desc="asking", unit="question") as bar:

            def one(item: tuple[str, int]) -> str:
                uid, i = item
                question = prompts[uid][i]["prompt"]
                ask = self._chat if apis[uid][i] == "chat" else self._generate
                reply = ask(keys[uid], question)
                bar.update(1)
                return reply

            replies = dict(zip(work, pool.map(one, work), strict=True))
        return {
            u["user_id"]: _Asked(
                u["prompts"], [replies[(u["user_id"], i)] for i in range(len(u["prompts"]))], apis[u["user_id"]]
            )
            for u in users
        }

    def _chat(self, key: str, question: str) -> str:
        from openai import OpenAI

        client = OpenAI(base_url=f"{self.stack.gateway}/v1", api_key=key, max_retries=0, timeout=120)
        completion = client.chat.completions.create(
            model="default",  # the user's adapter name; the gateway resolves it for the key's user
            messages=[{"role": "user", "content": question}],
            max_tokens=self._MAX_NEW_TOKENS,
            temperature=0,
        )
        return (completion.choices[0].message.content or "").strip()

    def _generate(self, key: str, question: str) -> str:
        body = {"inputs": chat_prompt(self.tokenizer, question), "parameters": {"max_new_tokens": self._MAX_NEW_TOKENS}}
        return str(request("POST", f"{self.stack.gateway}/generate", key=key, body=body)["generated_text"]).strip()
