"""Policies: one folder per method, all behind the same interface."""
