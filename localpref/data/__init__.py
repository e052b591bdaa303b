"""Steers: schema, loading, tokenization with divergence spans, importers."""
