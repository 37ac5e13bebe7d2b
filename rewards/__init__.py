"""Rewards: the protocol and registry (rewards/base.py), and every reward, each in its own module.

`rewards.base.build_reward(name)` builds any of them: the registry imports rewards/catalogue.py, which
imports every reward module, on its first lookup. No reward imports its heavy dependencies
(open_clip, OCR engines, ...) before it is constructed. This package file imports nothing, so that
importing a reward module never pulls in every other.
"""
