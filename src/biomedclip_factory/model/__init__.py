"""The CLIP model (timm vision tower + HF BERT text tower) in open_clip's local-dir format."""
