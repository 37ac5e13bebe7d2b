"""Domain-free plumbing shared by every package: registries and tokenizers. Imports nothing of the project."""
