"""Whether upstream LoRAX 0.12.1 can serve a Hugging Face base-model directory, judged from its JSON files alone.

This module owns the limits of the pinned LoRAX release that depend on the base model (decode attention head
sizes, the punica LoRA kernels' widths and ranks, the model types routed to the flash Llama implementation, the
tokenizer classes its transformers can load, the chat template it needs) and one check over them,
:func:`lorax_problems`. It reads ``config.json`` and ``tokenizer_config.json`` as plain JSON: no torch, no
transformers. It also owns :func:`lorax_rank`, the rank LoRAX pads an adapter's rank to.

Every limit was read from LoRAX's source at tag ``v0.12.1`` (commit c0e57983, 2024-11-21); the paths in the
comments are relative to that tree. Tensor parallelism is assumed off (one shard), as in our deployment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeGuard

__all__ = [
    "LORAX_BGMV_WIDTHS",
    "LORAX_DECODE_RANKS",
    "LORAX_HEAD_SIZES",
    "LORAX_LLAMA_MODEL_TYPES",
    "LORAX_MAX_VECTORIZED_RANK",
    "LORAX_PREFILL_RANKS",
    "LORAX_REQUIRED_CONFIG_FIELDS",
    "LORAX_ROPE_SCALING_TYPES",
    "LORAX_TOKENIZER_CLASSES",
    "LORAX_VERSION",
    "lora_projection_shapes",
    "lorax_dtype",
    "lorax_problems",
    "lorax_rank",
]

LORAX_VERSION = "0.12.1"

# Decode attention. With the default backend (`--backend fa2`, launcher/src/main.rs:625-627; FLASH_INFER is off
# unless set or PREFIX_CACHING, server/lorax_server/utils/state.py:18) decode runs vLLM's paged attention
# (server/lorax_server/utils/paged_attention.py:129-160, ops.paged_attention_v1/v2). The vLLM build is pinned in
# server/Makefile-vllm to commit 766435e6 (July 2024, the 0.5.3 line); vllm 0.5.3.post1's
# csrc/attention/attention_kernels.cu switches on exactly these head sizes and raises "Unsupported head size"
# otherwise (its vllm/attention/ops/paged_attn.py get_supported_head_sizes() says the same). Prefill (flash
# attention 2) accepts more; LoRAX's warm-up decodes (flash_causal_lm.py:1296-1302), so a bad head size stops
# the server at start-up.
LORAX_HEAD_SIZES: frozenset[int] = frozenset({64, 80, 96, 112, 128, 192, 256})

# The "wide" side of the punica BGMV decode kernel (server/punica_kernels/punica_kernels/bgmv/bgmv_config.h:12-76,
# FOR_BGMV_WIDE). punica_ops.cc:262-289 instantiates (rank -> wide) and (wide -> rank) for each pair, and
# dispatch_bgmv (punica_ops.cc:291-333) fails with TORCH_CHECK "No suitable kernel. h_in=.. h_out=.." for any
# other width. Note the gaps: 576, 192, 384, 896, ... have no kernel.
LORAX_BGMV_WIDTHS: frozenset[int] = frozenset({
    256, 512, 640, 768, 1024, 1152, 1280, 1536, 1728, 1792, 2048, 2304, 2560, 2752, 2816, 3072, 3456, 3584,
    4096, 4480, 4608, 5120, 5504, 5632, 6144, 6848, 6912, 7168, 8192, 8960, 9216, 9472, 10240, 11008, 12288,
    13696, 13824, 14336, 15360, 16384, 18944, 20480, 22016, 24576, 27392, 27648, 28672, 32000, 32256, 32512,
    32768, 33024, 36864, 43264, 49152, 64000, 64256, 64512, 102400, 102656, 102912, 128000, 128256, 128512,
})  # fmt: skip

# The "narrow" side of BGMV, i.e. the (padded) LoRA ranks decode has kernels for (bgmv_config.h:78-83,
# FOR_BGMV_WIDE_NARROW). Rank 96 was added and removed again before the tag (commits b9294ed5, a1230a58).
LORAX_DECODE_RANKS: tuple[int, ...] = (8, 16, 32, 64, 128)

# Prefill: ranks 16..128 go to the custom SGMV shrink (server/lorax_server/utils/punica.py:170-184,
# MIN_RANK_CUSTOM=16, MAX_RANK_CUSTOM=128), instantiated only for these widths
# (server/punica_kernels/punica_kernels/sgmv_flashinfer/sgmv_config.h:10-15; punica_ops.cc:393-410 fails with
# "No suitable kernel ... d_out=" otherwise). Rank 8 takes the cutlass SGMV path, which has no rank list.
LORAX_PREFILL_RANKS: tuple[int, ...] = (16, 32, 64, 96, 128)

# Above this padded rank a layer is not "vectorized" (BatchLoraWeights.can_vectorize,
# server/lorax_server/adapters/lora.py:243-247) and takes the slow per-adapter PyTorch loop instead of punica.
LORAX_MAX_VECTORIZED_RANK = 128

# server/lorax_server/models/__init__.py:183-192: only model_type "llama" is routed to FlashLlama; the
# architectures field is not consulted for it. (mistral, qwen2, gemma, ... have their own implementations,
# whose limits this module does not claim to know.)
LORAX_LLAMA_MODEL_TYPES: tuple[str, ...] = ("llama",)
_LLAMA_ARCHITECTURE = "LlamaForCausalLM"

# server/lorax_server/layers/rotary.py:78-129 implements rope_scaling["type"] in these, and raises
# NotImplementedError for any other type; it reads the key "type" only (a "rope_type"-only dict is a KeyError).
LORAX_ROPE_SCALING_TYPES: frozenset[str] = frozenset({"linear", "dynamic", "yarn", "su", "longrope"})

# The server pins transformers 4.45.1 (server/requirements.txt) and loads the tokenizer with AutoTokenizer
# (server/lorax_server/models/flash_causal_lm.py:1056). Checked against the 4.45.1 wheel:
# models/auto/tokenization_auto.py:895-906 appends "Fast" to a slow name (use_fast defaults to True) and
# raises "Tokenizer class ... does not exist" for names it cannot resolve, e.g. "TokenizersBackend", which
# transformers 5 writes. This is a small known-good subset for llama-family checkpoints, not the whole mapping.
LORAX_TOKENIZER_CLASSES: frozenset[str] = frozenset({
    "PreTrainedTokenizerFast",
    "LlamaTokenizerFast",
    "LlamaTokenizer",  # resolved to LlamaTokenizerFast
    "GPT2TokenizerFast",
    "GPT2Tokenizer",  # resolved to GPT2TokenizerFast
})  # fmt: skip

# Fields we require so the model is fully described by its own config instead of by LoRAX's defaults
# (LoRAX's LlamaConfig, flash_llama_modeling.py:58-107, silently defaults every one of them). A dtype must be
# given as "torch_dtype" or "dtype"; see the dtype check below for why "dtype" alone is not enough.
LORAX_REQUIRED_CONFIG_FIELDS: tuple[str, ...] = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "rms_norm_eps",
    "rope_theta",
    "max_position_embeddings",
)
_INT_FIELDS = tuple(f for f in LORAX_REQUIRED_CONFIG_FIELDS if f not in ("rms_norm_eps", "rope_theta"))

_SGMV_BLOCK = 16  # server/lorax_server/utils/punica.py:38, SGMV_BLOCK_SIZE
_MIN_SGMV_RANK = 8  # punica.py:35, MIN_SGMV_RANK


def lorax_rank(r: int) -> int:
    """The rank LoRAX 0.12.1 pads a LoRA rank ``r`` to: 8 if ``r <= 8``, else the next multiple of 16.

    From ``pad_to_min_rank`` (server/lorax_server/utils/punica.py:57-76), applied by ``LoraWeights.load``
    (server/lorax_server/adapters/lora.py:198-205, which then overwrites ``config.r`` with the padded rank).
    Padding only happens while the punica kernels are on; with ``--disable-sgmv`` the rank is left as is.
    """
    if r < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {r}")
    if r <= _MIN_SGMV_RANK:
        return _MIN_SGMV_RANK
    return -(-r // _SGMV_BLOCK) * _SGMV_BLOCK


def lorax_dtype(config: dict[str, Any], override: str | None = None) -> str:
    """The dtype LoRAX 0.12.1 serves a base model in, given its ``config.json``: the one every adapter factor is
    cast to when it loads (``load_module_weight``, server/lorax_server/utils/weights.py:555-567, with
    ``model.dtype``).

    ``--dtype`` (``override``) wins, else ``torch_dtype``, else float16; float16 and float32 both become float16
    (server/lorax_server/models/__init__.py:77-95). A GPU without bfloat16 falls back to float16, which this
    cannot see: LoRAX deploys on Ampere or newer, where it has it.
    """
    name = override or config.get("torch_dtype") or "float16"
    if not isinstance(name, str):
        raise ValueError(f"torch_dtype must be a string, got {name!r}")
    return "float16" if name in ("float16", "float32") else name


def lora_projection_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``{module: (in_features, out_features)}`` of each LoRA-targetable Llama projection, as LoRAX builds them.

    LoRAX's Llama takes head size = hidden_size // num_attention_heads (flash_llama_modeling.py:163, 237) and
    ignores ``head_dim``. These are the widths the punica kernels see: q/k/v/gate/up read hidden_size, o reads
    num_heads * head_size, down reads intermediate_size (layers per flash_llama.py:55-78).
    """
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    inter = int(config["intermediate_size"])
    head = hidden // heads
    return {
        "q_proj": (hidden, heads * head),
        "k_proj": (hidden, kv_heads * head),
        "v_proj": (hidden, kv_heads * head),
        "o_proj": (heads * head, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        problems.append(f"{path.name} is missing from {path.parent}")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(f"{path.name} is not readable JSON: {e}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name} must hold a JSON object, got {type(data).__name__}")
        return None
    return data


def _is_positive_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _config_problems(config: dict[str, Any], *, disable_sgmv: bool) -> list[str]:
    problems: list[str] = []
    model_type = config.get("model_type")
    if model_type not in LORAX_LLAMA_MODEL_TYPES:
        problems.append(
            f"config.json model_type {model_type!r} is not one LoRAX {LORAX_VERSION} serves with its flash Llama "
            f"implementation (supported here: {', '.join(LORAX_LLAMA_MODEL_TYPES)})"
        )
    architectures = config.get("architectures")
    if architectures is not None and architectures != [_LLAMA_ARCHITECTURE]:
        problems.append(
            f"config.json architectures {architectures!r}: LoRAX ignores this field and would serve the weights "
            f"as {_LLAMA_ARCHITECTURE}"
        )

    missing = [name for name in LORAX_REQUIRED_CONFIG_FIELDS if config.get(name) is None]
    if missing:
        problems.append(f"config.json is missing required fields: {', '.join(missing)}")
    given = {n: config[n] for n in _INT_FIELDS if config.get(n) is not None}
    bad_ints = [f"{n}={v!r}" for n, v in given.items() if not _is_positive_int(v)]
    if bad_ints:
        problems.append(f"config.json fields must be positive integers: {', '.join(bad_ints)}")

    # Dtype: server/lorax_server/models/__init__.py:79 reads only "torch_dtype" and falls back to float16; it
    # maps "float32" to float16 as well (lines 81-82). transformers 5 writes "dtype" instead.
    torch_dtype, dtype = config.get("torch_dtype"), config.get("dtype")
    if torch_dtype is None and dtype is None:
        problems.append("config.json gives no dtype: set torch_dtype (LoRAX 0.12.1 reads torch_dtype only)")
    elif torch_dtype is None and dtype == "bfloat16":
        problems.append(
            "config.json gives dtype 'bfloat16' but no torch_dtype: LoRAX 0.12.1 reads torch_dtype only and would "
            "serve float16; add torch_dtype or pass --dtype bfloat16"
        )

    rope_scaling = config.get("rope_scaling")
    if rope_scaling is not None:
        rope_type = rope_scaling.get("type") if isinstance(rope_scaling, dict) else None
        if rope_type not in LORAX_ROPE_SCALING_TYPES:
            problems.append(
                f"config.json rope_scaling {rope_scaling!r}: LoRAX 0.12.1 reads rope_scaling['type'] and supports "
                f"only {', '.join(sorted(LORAX_ROPE_SCALING_TYPES))}"
            )

    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    kv_heads, inter = config.get("num_key_value_heads", heads), config.get("intermediate_size")
    if not (
        _is_positive_int(hidden) and _is_positive_int(heads) and _is_positive_int(kv_heads) and _is_positive_int(inter)
    ):
        return problems  # shapes are undefined; the problems above already say why
    if hidden % heads:
        # flash_llama_modeling.py:191 asserts this at load time.
        problems.append(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}")
        return problems
    if heads % kv_heads:
        problems.append(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    head = hidden // heads
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim != head:
        # The Llama layers use hidden // heads (the qkv weight shape assert, flash_llama_modeling.py:207-213,
        # then fails to load a checkpoint built with head_dim), while the KV cache is sized from head_dim
        # (flash_causal_lm.py:1147-1153).
        problems.append(
            f"head_dim {head_dim} differs from hidden_size / num_attention_heads = {head}: LoRAX 0.12.1's Llama "
            "ignores head_dim"
        )
    if head not in LORAX_HEAD_SIZES:
        problems.append(
            f"head size {head} (hidden_size {hidden} / num_attention_heads {heads}) has no decode attention kernel "
            f"in LoRAX {LORAX_VERSION} (vLLM paged attention supports {sorted(LORAX_HEAD_SIZES)}); the server "
            "fails during warm-up"
        )

    if not disable_sgmv:
        # With the punica kernels on (the default) a decode step for a batch holding an adapter on one of these
        # modules calls BGMV with the module's input and output widths (utils/layers.py:143-164) and raises
        # "No suitable kernel": that whole batch fails, every request in it. Prefill uses SGMV/cutlass, which has
        # no width list, and warm-up runs without adapters, so the server starts and the failure comes at request
        # time. --disable-sgmv (launcher/src/main.rs:634, 842-843 -> DISABLE_SGMV, utils/punica.py:23) switches
        # to the PyTorch loop (utils/layers.py:169-190), which accepts any width, more slowly.
        by_width: dict[int, list[str]] = {}
        for module, (fan_in, fan_out) in lora_projection_shapes(config).items():
            for width in dict.fromkeys((fan_in, fan_out)):
                if width not in LORAX_BGMV_WIDTHS:
                    by_width.setdefault(width, []).append(module)
        for width, modules in sorted(by_width.items()):
            problems.append(
                f"LoRA width {width} ({', '.join(modules)}) has no punica BGMV decode kernel in LoRAX "
                f"{LORAX_VERSION}: decoding with an adapter on these modules fails with 'No suitable kernel' "
                "unless LoRAX runs with --disable-sgmv"
            )
    return problems


def _tokenizer_problems(tokenizer_config: dict[str, Any], base_dir: Path) -> list[str]:
    problems: list[str] = []
    tokenizer_class = tokenizer_config.get("tokenizer_class")
    # Absent is fine: AutoTokenizer then falls back to the model_type's mapping (llama -> LlamaTokenizerFast).
    if tokenizer_class is not None and not isinstance(tokenizer_class, str):
        problems.append("tokenizer_config.json tokenizer_class must be a string")
    elif tokenizer_class is not None and tokenizer_class not in LORAX_TOKENIZER_CLASSES:
        problems.append(
            f"tokenizer_config.json tokenizer_class {tokenizer_class!r} cannot be loaded by transformers 4.45.1 "
            f"(LoRAX {LORAX_VERSION}); use one of {', '.join(sorted(LORAX_TOKENIZER_CLASSES))}"
        )

    # The router reads the chat template from tokenizer_config.json only (router/src/main.rs:257-260, 318-324;
    # router/src/infer.rs:234-245) and answers chat requests with TemplateNotFound without one. transformers
    # 4.45.1 does not read a separate chat_template.jinja either (tokenization_utils_base.py:2124-2130 lists the
    # files it loads). A list of templates must contain one named "default" (infer.rs:238-241).
    template = tokenizer_config.get("chat_template")
    jinja = base_dir / "chat_template.jinja"
    if template is None:
        hint = f"; {jinja.name} exists but is not read, copy it into tokenizer_config.json" if jinja.is_file() else ""
        problems.append(
            f"tokenizer_config.json has no chat_template: LoRAX {LORAX_VERSION}'s chat route needs it{hint}"
        )
    elif isinstance(template, list):
        names = [t.get("name") for t in template if isinstance(t, dict) and isinstance(t.get("template"), str)]
        if len(names) != len(template) or "default" not in names:
            problems.append("tokenizer_config.json chat_template list needs {name, template} entries, one 'default'")
    elif not isinstance(template, str) or not template.strip():
        problems.append("tokenizer_config.json chat_template must be a non-empty string")

    # The router parses the whole file into one struct (router/src/lib.rs:1455-1488); one field of the wrong
    # shape makes it drop the file silently, chat template included.
    for name in ("bos_token", "eos_token"):
        token = tokenizer_config.get(name)
        if token is None or isinstance(token, str):
            continue
        if not (isinstance(token, dict) and isinstance(token.get("content"), str)):
            problems.append(f"tokenizer_config.json {name} must be a string or an object with a string 'content'")
    return problems


def lorax_problems(base_dir: Path, *, disable_sgmv: bool = False) -> list[str]:
    """Human-readable reasons LoRAX 0.12.1 cannot serve ``base_dir`` with LoRA adapters; empty when it can.

    ``disable_sgmv`` says LoRAX will run with ``--disable-sgmv``: the punica kernel width limits then do not
    apply (LoRA runs as a slower PyTorch loop). Reads ``config.json`` and ``tokenizer_config.json`` only; never
    raises for a malformed directory, it reports it.
    """
    base_dir = Path(base_dir)
    problems: list[str] = []
    if not base_dir.is_dir():
        return [f"{base_dir} is not a directory"]
    config = _read_json(base_dir / "config.json", problems)
    if config is not None:
        problems.extend(_config_problems(config, disable_sgmv=disable_sgmv))
    tokenizer_config = _read_json(base_dir / "tokenizer_config.json", problems)
    if tokenizer_config is not None:
        problems.extend(_tokenizer_problems(tokenizer_config, base_dir))
    return problems
