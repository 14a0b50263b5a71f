"""Model card templates, shipped as package data (`nextlocllm_hf.model_cards`)."""
