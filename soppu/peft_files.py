"""The two file names of a PEFT LoRA adapter directory (and our probes file beside them), defined once. A
module of its own so that code which only names files (the bucket layout, the gateway) does not import the
adapter package and with it torch."""

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PROBES_NAME = "probes.json"  # SOPPU's own: the uploader's probe prompts, stored beside the original

__all__ = ["CONFIG_NAME", "PROBES_NAME", "WEIGHTS_NAME"]
