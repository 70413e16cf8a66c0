"""DDN itself, independent of robots and images."""

from ddn_policy.core.balance import (
    LossFreeBalance,
    SplitAndPrune,
    SplitDecision,
    make_balancer,
    split_decision,
)
from ddn_policy.core.latent import bits_to_codes, codes_to_bits
from ddn_policy.core.layer import DiscreteDistributionLayer, LayerOutput
from ddn_policy.core.network import (
    BeamResult,
    DDNBase,
    RecurrentDDN,
    SingleShotDDN,
    Trace,
    WalkResult,
)
from ddn_policy.core.select import (
    Central,
    Combined,
    FromCodes,
    Guided,
    Nearest,
    Prefix,
    Prior,
    RankSum,
    SelectionContext,
    Selector,
    Uniform,
    prior_log_prob,
)

__all__ = [
    "BeamResult",
    "Central",
    "Combined",
    "DDNBase",
    "DiscreteDistributionLayer",
    "FromCodes",
    "Guided",
    "LayerOutput",
    "LossFreeBalance",
    "Nearest",
    "Prefix",
    "Prior",
    "RankSum",
    "RecurrentDDN",
    "SelectionContext",
    "Selector",
    "SingleShotDDN",
    "SplitAndPrune",
    "SplitDecision",
    "Trace",
    "Uniform",
    "WalkResult",
    "bits_to_codes",
    "codes_to_bits",
    "make_balancer",
    "prior_log_prob",
    "split_decision",
]
