"""Text rewards (`reward(texts, prompts) -> [B]`), registered in the shared reward registry
(rewards/catalogue.py imports each module; the base classes are in rewards/text/base.py)."""
