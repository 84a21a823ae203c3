"""WebDataset shards in open_clip's convention, and the loader that streams them back."""
