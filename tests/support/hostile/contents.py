"""Hostile adapters in what they say: patterns that backtrack, files that must be there, tensors against the config,
non-finite values, variants we do not serve, broken configs, and oversized probes."""

from __future__ import annotations

import json

import torch

from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME
from soppu.errors import AdapterErrorCode
from soppu.peft_files import PROBES_NAME
from tests.support.adapter_factory import (
    Q_PROJ,
    config_dict,
    forge_weights,
    marker_tensor,
    safetensors_bytes,
    tar_bytes,
    write_dir,
    zip_bytes,
)
from tests.support.hostile.blocks import (
    QB,
    Corpus,
    built,
    cfg,
    non_finite,
    valid_files,
    valid_tensors,
    valid_weights,
    weights_with,
)

C = AdapterErrorCode
CASES = Corpus()
case = CASES.case

# Catastrophic backtracking: Python's re would hang here; the matcher times out and refuses the config.
case(
    C.BAD_CONFIG,
    lambda t: built(
        valid_files(
            forge_weights((k.replace(Q_PROJ, "a" * 60), v) for k, v in valid_tensors().items()),
            config=cfg(target_modules="(a|aa)+b"),
        )
    ),
    "regex-target-modules-backtracks",
)
case(C.BAD_CONFIG, lambda t: built(valid_files(config=cfg(target_modules="q" * 600))), "regex-pattern-too-long")

# What must be there.
case(C.MISSING_CONFIG, lambda t: built({WEIGHTS_NAME: valid_weights()}), "upload-without-config")
case(
    C.MISSING_CONFIG,
    lambda t: built(zip_bytes({WEIGHTS_NAME: valid_weights(), "README.md": b"hi"})),
    "zip-without-config",
)
case(C.MISSING_CONFIG, lambda t: built(write_dir(t / "empty", {})), "empty-directory")
case(
    C.MISSING_CONFIG,
    lambda t: built(write_dir(t / "a", {"Adapter_Config.JSON": cfg(), WEIGHTS_NAME: valid_weights()})),
    "config-name-in-other-case",
)
case(C.MISSING_WEIGHTS, lambda t: built({CONFIG_NAME: cfg()}), "upload-without-weights")
case(
    C.MISSING_WEIGHTS,
    lambda t: built(tar_bytes({CONFIG_NAME: cfg(), "model.safetensors": valid_weights()}, gz=True)),
    "tar-gz-with-full-model-name",
)
case(
    C.MISSING_WEIGHTS,
    lambda t: built(write_dir(t / "a", {CONFIG_NAME: cfg(), "sub/" + WEIGHTS_NAME: valid_weights()})),
    "directory-weights-in-subfolder",
)

# Tensor shapes and names against the config.
case(C.SHAPE_MISMATCH, lambda t: built(valid_files(config=cfg(r=8))), "config-r-8-tensors-r-4")
case(C.SHAPE_MISMATCH, lambda t: built(valid_files(weights_with(QB=marker_tensor((16, 3))))), "a-and-b-ranks-differ")
case(C.SHAPE_MISMATCH, lambda t: built(valid_files(weights_with(QA=marker_tensor((64,))))), "one-dimensional-factor")
case(
    C.SHAPE_MISMATCH,
    lambda t: built(valid_files(weights_with(QA=marker_tensor((1, 4, 16))))),
    "three-dimensional-factor",
)
case(C.SHAPE_MISMATCH, lambda t: built(valid_files(config=cfg(rank_pattern={"v_proj": 2}))), "rank-pattern-disagrees")
case(
    C.SHAPE_MISMATCH,
    lambda t: built(valid_files(weights_with(QA=torch.zeros(4, 0), QB=torch.zeros(0, 4)))),
    "empty-factors",
)
case(C.MISSING_TENSOR, lambda t: built(valid_files(weights_with(QB=None))), "lora-b-missing")
case(C.MISSING_TENSOR, lambda t: built(valid_files(weights_with(VA=None))), "lora-a-missing")
case(C.MISSING_TENSOR, lambda t: built(valid_files(safetensors_bytes({}))), "no-tensors")
case(
    C.MISSING_TENSOR,
    lambda t: built(valid_files(safetensors_bytes({"__metadata__": {"format": "pt"}}))),
    "metadata-only",
)
case(
    C.UNEXPECTED_TENSOR,
    lambda t: built(valid_files(config=cfg(target_modules=["q_proj"]))),
    "module-not-in-target-modules",
)
case(
    C.UNEXPECTED_TENSOR,
    lambda t: built(valid_files(config=cfg(target_modules=r".*\.q_proj"))),
    "module-not-matched-by-regex",
)
case(
    C.UNEXPECTED_TENSOR,
    lambda t: built(valid_files(forge_weights([*valid_tensors().items(), ("lm_head.weight", marker_tensor((2, 2)))]))),
    "full-weight-smuggled-in",
)
case(
    C.UNEXPECTED_TENSOR,
    lambda t: built(
        valid_files(forge_weights((k.replace(".weight", ".default.weight"), v) for k, v in valid_tensors().items()))
    ),
    "adapter-name-left-in-keys",
)
case(
    C.UNEXPECTED_TENSOR,
    lambda t: built(
        valid_files(forge_weights([*valid_tensors().items(), (QB.replace(".weight", ".bias"), marker_tensor((16,)))]))
    ),
    "lora-bias-tensor",
)

# Values.
case(C.NON_FINITE, lambda t: built(valid_files(weights_with(QA=non_finite((4, 16), float("nan"))))), "nan")
case(C.NON_FINITE, lambda t: built(valid_files(weights_with(VB=non_finite((8, 4), float("inf"))))), "inf")
case(
    C.NON_FINITE,
    lambda t: built(valid_files(weights_with(QA=torch.tensor([float("inf"), float("-inf")] * 32).view(4, 16)))),
    "inf-and-minus-inf-in-one-tensor",
)
case(
    C.NON_FINITE,
    lambda t: built(valid_files(weights_with(QB=non_finite((16, 4), float("-inf"), torch.float16)))),
    "fp16-minus-inf",
)
case(
    C.NON_FINITE,
    lambda t: built(valid_files(weights_with(VA=non_finite((4, 16), float("nan"), torch.bfloat16)))),
    "bf16-nan",
)

# Variants we do not serve.
case(C.UNSUPPORTED_VARIANT, lambda t: built(valid_files(config=cfg(use_dora=True))), "dora-config")
case(
    C.UNSUPPORTED_VARIANT,
    lambda t: built(
        valid_files(
            forge_weights(
                [*valid_tensors().items(), (f"base_model.model.{Q_PROJ}.lora_magnitude_vector", marker_tensor((16,)))]
            )
        )
    ),
    "dora-magnitude-vector",
)
case(C.UNSUPPORTED_VARIANT, lambda t: built(valid_files(config=cfg(peft_type="IA3"))), "ia3")
case(C.UNSUPPORTED_VARIANT, lambda t: built(valid_files(config=cfg(peft_type="PROMPT_TUNING"))), "prompt-tuning")
case(C.UNSUPPORTED_VARIANT, lambda t: built(valid_files(config=cfg(modules_to_save=["lm_head"]))), "modules-to-save")
case(C.UNSUPPORTED_VARIANT, lambda t: built(valid_files(config=cfg(bias="lora_only"))), "trained-bias")

# The config file.
case(
    C.BAD_CONFIG,
    lambda t: built(
        valid_files(config=json.dumps({k: v for k, v in config_dict().items() if k != "peft_type"}).encode())
    ),
    "missing-peft-type",
)
case(C.BAD_CONFIG, lambda t: built(valid_files(config=b'{"peft_type": "LORA", "r": 4,')), "invalid-json")
case(C.BAD_CONFIG, lambda t: built(valid_files(config=b"[1, 2, 3]")), "json-array")
case(C.BAD_CONFIG, lambda t: built(valid_files(config=b"\xff\xfe{}")), "not-utf8")
case(C.BAD_CONFIG, lambda t: built(valid_files(config=cfg(r=0))), "r-zero")
case(C.BAD_CONFIG, lambda t: built(valid_files(config=cfg(r="4"))), "r-string")
case(C.BAD_CONFIG, lambda t: built(valid_files(config=cfg(r=True))), "r-boolean")
case(C.BAD_CONFIG, lambda t: built(valid_files(config=cfg(r=4.0))), "r-float")
case(C.BAD_CONFIG, lambda t: built(valid_files(config=cfg(r=100_000))), "r-huge")
case(
    C.BAD_CONFIG,
    lambda t: built(valid_files(config=b'{"peft_type": "LORA", "r": 1' + b"0" * 5000 + b"}")),
    "r-with-5000-digits",
)
case(C.BAD_CONFIG, lambda t: built(valid_files(config=b"[" * 100_000 + b"]" * 100_000)), "nested-100000-deep")
case(
    C.BAD_CONFIG,
    lambda t: built(valid_files(config=cfg().replace(b'"lora_alpha": 8', b'"lora_alpha": NaN'))),
    "alpha-nan",
)
case(C.BAD_CONFIG, lambda t: built(valid_files(config=cfg(lora_alpha=-8))), "alpha-negative")
case(C.BAD_CONFIG, lambda t: built(valid_files(config=cfg(target_modules=[]))), "target-modules-empty")
case(C.BAD_CONFIG, lambda t: built(valid_files(config=cfg(target_modules="(("))), "target-modules-bad-regex")
case(C.BAD_CONFIG, lambda t: built(valid_files(config=cfg(use_rslora="yes"))), "use-rslora-not-bool")
case(C.BAD_CONFIG, lambda t: built(valid_files(config=cfg(rank_pattern={"q_proj": 0}))), "rank-pattern-zero")
case(C.BAD_CONFIG, lambda t: built(valid_files(config=cfg(alpha_pattern={"[": 4}))), "alpha-pattern-bad-regex")
case(C.BAD_CONFIG, lambda t: built(valid_files(config=cfg(base_model=123))), "base-model-not-string")


# The uploader's probes: too big to read is refused before parsing (the rest of their rules: bad_probes tests).
case(
    C.BAD_PROBES,
    lambda t: built({**valid_files(), PROBES_NAME: b"[" + b'"x",' * 20_000 + b'"x"]'}),
    "probes-over-64-KiB",
)
