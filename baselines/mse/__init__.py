"""Regression baseline: the DDN's trunk predicting the chunk directly under an L2 loss."""

from baselines.mse.modeling import RegressionPolicy, RegressionPolicyConfig

__all__ = ["RegressionPolicy", "RegressionPolicyConfig"]
