"""Training: one loop for every modality (trainer), checkpoints (safetensors + resolved config)."""
