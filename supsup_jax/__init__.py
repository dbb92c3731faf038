"""supsup_jax: Supermasks in Superposition in JAX/Flax.

Masks and scores are pytrees over an immutable random weight tree derived
from a seed. See README.md for a tour and docs/ for the guide and this API.
"""
from supsup_jax import bank
from supsup_jax import learner
from supsup_jax import inference
from supsup_jax import masks
from supsup_jax import models
from supsup_jax import training
from supsup_jax import tree
from supsup_jax import weights
from supsup_jax.bank import BankState
from supsup_jax.bank import MaskBank
from supsup_jax.learner import Learner
from supsup_jax.masks import apply_masks
from supsup_jax.masks import er_fractions
from supsup_jax.masks import init_scores
from supsup_jax.masks import masks_from_scores
from supsup_jax.masks import threshold_mask
from supsup_jax.masks import topk_mask
from supsup_jax.masked_model import MaskedModel
from supsup_jax.masks import MaskSpec
from supsup_jax.weights import init_weights

__version__ = "0.1.0"
