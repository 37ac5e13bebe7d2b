"""What every package shares and that imports nothing of the project: the registries (names to factories,
with suggestions for a misspelt name) and the tokenizers built in code for the tiny and toy models
(their vocabulary is the toy world's prompt grammar)."""
