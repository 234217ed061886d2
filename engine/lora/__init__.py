"""LoRA adapters per request: PEFT adapters read into the fused projections' layout (`adapter`), the registry that
keeps up to `max_loras` of them resident and gates admission (`registry`), and the batched low-rank apply that the
model's projections reach through one hook (`batch`, `engine.models.llama.project`)."""
