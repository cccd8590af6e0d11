"""``soppu demo``: the product end to end on the example users, with nothing but this machine.

1. build (or reuse) the example base model and the users' adapters;
2. start the ``soppu dev`` topology (moto S3, engine, compressor, gateway) on free ports;
3. create an API key for each user through the compressor's admin API;
4. upload each user's adapter over HTTP and wait for the compression jobs, then refit the cohort once over
   every user (the joint compression: one shared basis, one small core per user);
5. generate each user's answers through the gateway's ``/generate`` with that user's key;
6. print a table (user, expected, answer through SOPPU, compression ratio, served compressed or from the
   original, worst per-module error of the compressed form) and the path of the quality plot (every user's
   per-module errors);
7. stop the stack. Exit 0 only if every user got their own answers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from soppu.cli.stack import Stack
from soppu.cli.stack_client import request, upload_adapter, wait_for_job
from soppu.cli.tables import print_table
from soppu.examples import ExamplesSpec, build_examples
from soppu.examples.build import default_cache_dir
from soppu.peft_files import CONFIG_NAME, WEIGHTS_NAME
from soppu.verify.plot import plot_adapter_errors

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole product on the example users: upload, compress, serve through the gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--users", type=int, default=20, help="example users (default 20)")
    parser.add_argument("--examples", type=Path, default=Path(".cache/examples"), help="where the examples go")
    parser.add_argument("--workdir", type=Path, default=Path(".cache/demo"), help="logs and the plot go here")
    parser.add_argument("--rank", type=int, default=32, help="the cohort's shared rank R (default 32)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from soppu.cli.dev import free_ports_config

    started = time.perf_counter()
    examples = build_examples(
        ExamplesSpec(users=args.users), args.examples, cache_dir=default_cache_dir(), progress=True
    )
    users = json.loads((examples / "users.json").read_text())["users"]
    # No refit per upload: the demo refits once, over everyone, after the last upload.
    policy = {"SOPPU_COMPRESSOR_RANK": str(args.rank), "SOPPU_COMPRESSOR_REFIT_AFTER": str(10 * len(users) + 1)}
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
            jobs[uid] = upload_adapter(f"{stack.compressor}/v1/users/{uid}/adapters", files, key=keys[uid])["job_id"]
        failed = [uid for uid, job in jobs.items() if wait_for_job(stack.compressor, job, key=admin)["state"] != "done"]
        if failed:
            print(f"compression jobs failed for {failed}; see {args.workdir / 'logs'}")
            return 1
        cohort = wait_for_job(stack.compressor, jobs[users[0]["user_id"]], key=admin)["report"]["cohort"]
        print(f"refitting cohort {cohort} over {len(users)} users ...", flush=True)
        request("POST", f"{stack.compressor}/v1/cohorts/{cohort}/refit", key=admin, timeout=600)
        rows, ok_users, errors = [], 0, {}
        for user in tqdm(users, desc="generating", unit="user"):
            report = _current_report(stack, user["user_id"], admin)
            errors[user["user_id"]] = report.get("errors", {})
            answers = [_generate(stack, keys[user["user_id"]], p["prompt"]) for p in user["prompts"]]
            expected = [p["expected"] for p in user["prompts"]]
            ok = answers == expected
            ok_users += ok
            rows.append(
                [
                    user["user_id"],
                    ", ".join(expected),
                    ", ".join(answers),
                    f"{report.get('ratio', 1.0):.2f}x",
                    report.get("served_from", "?"),
                    f"{max(report.get('errors', {}).values(), default=0.0):.3f}",
                    "ok" if ok else "WRONG",
                ]
            )
    plot = args.workdir / "quality.png"
    title = f"JD-Full, R={args.rank}, {len(users)} example users: relative error per module of the compressed form"
    plot.write_bytes(plot_adapter_errors(errors, title))
    headers = ["user", "expected", "answer through SOPPU", "ratio", "served", "worst JD error", ""]
    print_table(headers, rows)
    print(f"\n{ok_users}/{len(users)} users got their own answers through the gateway")
    print(f"quality plot (per-module errors): {plot}")
    print(f"demo took {time.perf_counter() - started:.0f} s")
    return 0 if ok_users == len(users) else 1


def _current_report(stack: Stack, user_id: str, key: str) -> dict[str, Any]:
    adapter = request("GET", f"{stack.compressor}/v1/users/{user_id}/adapters", key=key)["adapters"][0]
    current = next(v for v in adapter["versions"] if v["version"] == adapter["current_version"])
    return dict(current.get("report") or {})


def _generate(stack: Stack, key: str, prompt: str) -> str:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 4, "stop": ["."]}}
    return str(request("POST", f"{stack.gateway}/generate", key=key, body=body)["generated_text"]).strip()
