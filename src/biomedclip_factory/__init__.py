"""BiomedCLIP factory: PMC Open Access → figure–caption corpus → CLIP pretraining → registry."""

__version__ = "0.1.0"
