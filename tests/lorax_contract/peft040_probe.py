"""Load adapters with peft 0.4.0, the library LoRAX 0.12.1 reads adapter configs with, and print what it made.

Run by tests/lorax_contract/test_peft040.py with ``.venv/bin/python`` and ``PYTHONPATH=.cache/lorax-libs``
(``make lorax-libs``), so LoRAX's pins (peft 0.4.0, transformers 4.45.1, huggingface-hub 0.23.5, ...) shadow
the venv's newer ones while torch and safetensors come from the venv. It imports nothing from SOPPU: what it
prints is peft 0.4.0's reading, for the tests to hold against SOPPU's own semantics.

    python peft040_probe.py --model-config '{"hidden_size": 32, ...}' --out DIR ADAPTER_DIR [ADAPTER_DIR ...]

prints one JSON object on its last stdout line:

- ``versions``: the libraries actually imported (the test checks the shadowing worked);
- ``adapters``: one entry per ADAPTER_DIR, in order:
  - ``config``: r, lora_alpha, target_modules, fan_in_fan_out, base_model_name_or_path as
    ``peft.LoraConfig.from_pretrained(dir)`` set them;
  - ``dropped``: the keys of adapter_config.json that peft 0.4.0's LoraConfig has no field for (it drops them
    silently); ``has``: whether the loaded config has use_rslora / rank_pattern / alpha_pattern / use_dora;
  - ``model``: with ``--model-config``, ``PeftModel.from_pretrained`` onto a tiny random LlamaForCausalLM built
    from that config: ``{"loaded": false, "error": ...}`` when peft refuses the weights, else ``loaded``,
    ``deltas_file`` (a safetensors file under ``--out``: per adapted module path, as SOPPU names it
    (``model.layers.0.self_attn.q_proj``), the delta weight the LoRA layer's forward adds, d_out x d_in) and
    per module its ``rank``, ``scaling`` (peft 0.4.0's ``lora_alpha / r``), ``norm`` and
    ``merge_vs_forward_max_abs`` (forward delta against ``get_delta_weight``: the two peft 0.4.0 paths agree).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

_PREFIX = "base_model.model."
_CONFIG_FIELDS = ("r", "lora_alpha", "target_modules", "fan_in_fan_out", "base_model_name_or_path")
_MAYBE_DROPPED = ("use_rslora", "rank_pattern", "alpha_pattern", "use_dora")


def _versions() -> dict[str, str]:
    import accelerate
    import huggingface_hub
    import peft
    import tokenizers
    import transformers

    return {
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "tokenizers": tokenizers.__version__,
        "accelerate": accelerate.__version__,
        "torch": torch.__version__,
        "peft_file": peft.__file__,
    }


def _config(directory: Path) -> dict[str, Any]:
    from peft import LoraConfig

    # The call LoRAX 0.12.1 makes (server/lorax_server/adapters/lora.py, LoraConfig.load); no api_token here.
    config = LoraConfig.from_pretrained(str(directory), token=None)
    raw = json.loads((directory / "adapter_config.json").read_text())
    fields = {}
    for name in _CONFIG_FIELDS:
        value = getattr(config, name)
        fields[name] = sorted(value) if isinstance(value, set) else value
    return {
        "config": fields,
        "dropped": sorted(key for key in raw if not hasattr(config, key)),
        "has": {name: hasattr(config, name) for name in _MAYBE_DROPPED},
    }


def _tiny_llama(model_config: dict[str, Any]) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**model_config)).eval()


def _forward_delta(layer: torch.nn.Module) -> torch.Tensor:
    """What the LoRA layer's forward adds to the base layer's output, as a d_out x d_in matrix: the layer on
    the identity, less the frozen base weight's own output."""
    from peft.utils import transpose

    eye = torch.eye(layer.in_features, dtype=layer.weight.dtype)
    with torch.no_grad():
        base = torch.nn.functional.linear(eye, transpose(layer.weight, layer.fan_in_fan_out), layer.bias)
        return (layer(eye) - base).T.contiguous()


def _model(directory: Path, model_config: dict[str, Any], out: Path) -> dict[str, Any]:
    from peft import PeftModel
    from peft.tuners.lora import Linear as LoraLinear
    from safetensors.torch import save_file

    try:
        model = PeftModel.from_pretrained(_tiny_llama(model_config), str(directory)).eval()
    except (RuntimeError, ValueError, KeyError) as e:
        return {"loaded": False, "error": f"{type(e).__name__}: {e}"}
    deltas: dict[str, torch.Tensor] = {}
    modules: dict[str, Any] = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, LoraLinear):
            continue
        module = name.removeprefix(_PREFIX)
        adapter = layer.active_adapter
        delta = _forward_delta(layer)
        with torch.no_grad():
            merged = layer.get_delta_weight(adapter)
        deltas[module] = delta
        modules[module] = {
            "rank": layer.r[adapter],
            "scaling": layer.scaling[adapter],
            "norm": float(delta.norm()),
            "merge_vs_forward_max_abs": float((merged - delta).abs().max()),
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(deltas, str(out))
    return {"loaded": True, "deltas_file": str(out), "modules": modules}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapters", nargs="+", type=Path, help="adapter directories (adapter_config.json + weights)")
    parser.add_argument("--model-config", type=json.loads, help="LlamaConfig fields of a tiny random base model")
    parser.add_argument("--out", type=Path, help="folder for the per-adapter delta files (with --model-config)")
    args = parser.parse_args(argv)
    if args.model_config is not None and args.out is None:
        parser.error("--model-config needs --out")

    report: dict[str, Any] = {"versions": _versions(), "adapters": []}
    for index, directory in enumerate(args.adapters):
        entry = {"dir": str(directory), **_config(directory)}
        if args.model_config is not None:
            entry["model"] = _model(directory, args.model_config, args.out / f"{index}.safetensors")
        report["adapters"].append(entry)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
