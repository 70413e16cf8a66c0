"""Rollouts, metrics, benchmark tables and plots."""
