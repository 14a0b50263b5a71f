"""Flat NextLocLLM model code; also shipped as remote code beside saved weights (relative imports only)."""
