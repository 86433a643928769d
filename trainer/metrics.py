"""clu.metrics collections for training and evaluation, built from token-weighted sums.

The step returns sums over predicted tokens and their denominators (already
psum'd over devices), so merging collections across steps or eval batches
keeps every average token-weighted: a batch with more predictions counts more.
"""

import flax
import jax.numpy as jnp
from clu import metrics


@flax.struct.dataclass
class TokenLoss(metrics.Average):
    """Mean loss per predicted token."""

    @classmethod
    def from_model_output(cls, loss_sum, token_count, **_):
        return cls(total=loss_sum, count=token_count)


@flax.struct.dataclass
class TokenAccuracy(metrics.Average):
    """Fraction of predicted tokens whose arg-max is the label."""

    @classmethod
    def from_model_output(cls, correct_sum, token_count, **_):
        return cls(total=correct_sum, count=token_count)


@flax.struct.dataclass
class Perplexity(TokenLoss):
    """exp of the token-weighted mean loss (not a mean of per-batch perplexities)."""

    def compute(self):
        return jnp.exp(super().compute())


@flax.struct.dataclass
class LearningRate(metrics.LastValue):
    """The learning rate of the latest step."""

    @classmethod
    def from_model_output(cls, learning_rate, **_):
        return cls(total=learning_rate, count=jnp.ones((), jnp.int32))


@flax.struct.dataclass
class GradNorm(metrics.Average):
    """Mean over steps of the global gradient norm (before clipping)."""

    @classmethod
    def from_model_output(cls, grad_norm, **_):
        return cls(total=grad_norm, count=jnp.ones_like(grad_norm))


@flax.struct.dataclass
class Total(metrics.Metric):
    """A plain sum over steps; subclasses say which output they add up."""

    total: jnp.ndarray

    @classmethod
    def empty(cls):
        return cls(total=jnp.array(0, jnp.float32))

    def merge(self, other):
        return type(self)(total=self.total + other.total)

    def compute(self):
        return self.total


@flax.struct.dataclass
class PredictedTokens(Total):
    """Predicted (weight-1) tokens over all devices."""

    @classmethod
    def from_model_output(cls, token_count, **_):
        return cls(total=token_count)


@flax.struct.dataclass
class NonfiniteUpdates(Total):
    """Steps whose loss or gradient was not finite (skipped when skip_nonfinite_updates)."""

    @classmethod
    def from_model_output(cls, nonfinite, **_):
        return cls(total=nonfinite)


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
    loss: TokenLoss
    accuracy: TokenAccuracy
    learning_rate: LearningRate
    grad_norm: GradNorm
    predicted_tokens: PredictedTokens
    nonfinite_updates: NonfiniteUpdates


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
    loss: TokenLoss
    accuracy: TokenAccuracy
    perplexity: Perplexity
    predicted_tokens: PredictedTokens
