"""``train-lora``: FE2E's consistent-velocity LoRA fine-tuning (data, objective, loop, kohya export)."""
