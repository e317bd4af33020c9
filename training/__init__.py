"""Rewards, PPO, the adversarial trainer, checkpoints and their configuration."""
