"""The figure–caption corpus: pair records, image normalisation, filters, dedup and the split."""
