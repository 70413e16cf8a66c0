"""Blocks and heads built on ddn_policy.core."""
