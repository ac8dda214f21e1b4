"""Checkpoint slimming: read, plan, write and verify safetensors checkpoints."""
