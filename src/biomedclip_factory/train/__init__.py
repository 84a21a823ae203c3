"""Contrastive pretraining through DeepSpeed: config from params, the loop, checkpoints."""
