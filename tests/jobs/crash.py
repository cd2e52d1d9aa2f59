"""A training module that fails at import, as a broken script would."""

raise ImportError("No module named 'transformers_typo'")
