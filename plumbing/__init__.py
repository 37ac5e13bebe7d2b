"""Domain-free plumbing shared by every package: registries, tokenizers, lean frozen convolutions. Imports nothing of the project."""
