"""Hugging Face speech-LLM families, one small adapter each; importing this registers them."""
