"""Evaluation of causal language models: sliding-window perplexity, LAMBADA, and the `ted lm-eval` command."""
