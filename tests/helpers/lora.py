"""PEFT adapters for the LoRA tests: random weights saved in PEFT's format, and the references they are held to
(the adapter merged into the weights, and PEFT's own `PeftModel`)."""
from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(model_dir: Path, out_dir: Path, r: int, seed: int, targets: list[str] | None = None,
                 alpha: int | None = None, rslora: bool = False) -> Path:
    """A random LoRA adapter (A and B both random: `init_lora_weights=False`) saved as a PEFT directory.

    `targets` None is PEFT's default for the architecture (q_proj and v_proj on Llama).
    """
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=alpha or r, target_modules=targets, init_lora_weights=False,
                        use_rslora=rslora, task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    model = get_peft_model(base, config)
    with torch.no_grad():  # PEFT's random init gives updates far larger than the weights; keep them comparable
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.mul_(0.5)
    model.save_pretrained(out_dir)
    return out_dir


def peft_model(model_dir: Path, adapter_dir: Path):
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


def merged_model(model_dir: Path, adapter_dir: Path):
    return peft_model(model_dir, adapter_dir).merge_and_unload().eval()
