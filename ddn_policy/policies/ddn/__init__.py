"""The DDN action-chunk policy."""

from ddn_policy.policies.ddn.modeling import DDNPolicy, DDNPolicyConfig

__all__ = ["DDNPolicy", "DDNPolicyConfig"]
