"""A Transformer encoder block built from keras' own `MultiHeadAttention`."""

from __future__ import annotations

import keras

from keras_dae.serialization import register
from keras_dae.validation import InputError


@register
class TransformerEncoder(keras.layers.Layer):
    """Self-attention then a feed-forward network, each with a residual and layer norm.

    The same computation as `keras_hub.layers.TransformerEncoder` (tested equal, weight for
    weight, where keras-hub is installed). keras-dae does not use keras-hub's class because
    keras-hub requires tensorflow-text and so TensorFlow, and a model saved with it could not
    be loaded on a JAX or PyTorch machine without TensorFlow.

    Input and output `(batch, frames, hidden_dim)`.

    Args:
        intermediate_dim: width of the feed-forward network's hidden layer.
        num_heads: attention heads; `hidden_dim` must be divisible by it.
        dropout: dropout rate after attention and after the feed-forward network (and inside
            attention).
        activation: the feed-forward activation.
        layer_norm_epsilon: epsilon of both layer norms.
        normalize_first: pre-norm (norm before each sub-block) instead of post-norm.
        kernel_initializer, bias_initializer: for every dense kernel and bias.
    """

    def __init__(
        self,
        intermediate_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        activation="relu",
        layer_norm_epsilon: float = 1e-5,
        normalize_first: bool = False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if intermediate_dim <= 0 or num_heads <= 0:
            raise InputError(
                f"`intermediate_dim` and `num_heads` must be positive, got {intermediate_dim} "
                f"and {num_heads}."
            )
        if not 0 <= dropout < 1:
            raise InputError(f"`dropout` must lie in [0, 1), got {dropout}.")
        self.intermediate_dim = int(intermediate_dim)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.normalize_first = bool(normalize_first)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

    def _dense_args(self):
        return dict(
            kernel_initializer=self.kernel_initializer.__class__.from_config(
                self.kernel_initializer.get_config()
            ),
            bias_initializer=self.bias_initializer.__class__.from_config(
                self.bias_initializer.get_config()
            ),
            dtype=self.dtype_policy,
        )

    def build(self, inputs_shape):
        hidden_dim = inputs_shape[-1]
        if hidden_dim % self.num_heads:
            raise InputError(
                f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({self.num_heads})."
            )
        self._attention = keras.layers.MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=hidden_dim // self.num_heads,
            dropout=self.dropout,
            name="self_attention_layer",
            **self._dense_args(),
        )
        self._attention.build(inputs_shape, inputs_shape)
        self._attention_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="self_attention_layer_norm",
            dtype=self.dtype_policy,
        )
        self._attention_norm.build(inputs_shape)
        self._attention_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self._ff_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="feedforward_layer_norm",
            dtype=self.dtype_policy,
        )
        self._ff_norm.build(inputs_shape)
        self._ff_intermediate = keras.layers.Dense(
            self.intermediate_dim, activation=self.activation,
            name="feedforward_intermediate_dense", **self._dense_args(),
        )
        self._ff_intermediate.build(inputs_shape)
        self._ff_output = keras.layers.Dense(
            hidden_dim, name="feedforward_output_dense", **self._dense_args()
        )
        self._ff_output.build((*inputs_shape[:-1], self.intermediate_dim))
        self._ff_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def call(self, inputs, training=None):
        x = inputs
        residual = x
        if self.normalize_first:
            x = self._attention_norm(x)
        x = self._attention(query=x, value=x, training=training)
        x = self._attention_dropout(x, training=training) + residual
        if not self.normalize_first:
            x = self._attention_norm(x)
        residual = x
        if self.normalize_first:
            x = self._ff_norm(x)
        x = self._ff_output(self._ff_intermediate(x))
        x = self._ff_dropout(x, training=training) + residual
        if not self.normalize_first:
            x = self._ff_norm(x)
        return x

    def reinitialize_attention(self, like_new_block: bool = False) -> None:
        """Draws the self-attention's weights anew; biases from `bias_initializer` (zeros).

        By default (what `keras-dae train --preset diverse_pretrained` does), every kernel from
        the block's `kernel_initializer` over the kernel's own three axes, as a convolution's
        fans count them, and the query, key and value kernels as one matrix `W`. Keras'
        attention counts its fans over its head axes instead, so these kernels are smaller
        than a new block's (Glorot's bound at width 64 with 8 heads: 0.077 for query, key and
        value, 0.102 for the output, against 0.217 for each), and the attention adds little to
        each block's residual at first: the blocks start close to the identity (as Fixup,
        Zhang et al., ICLR 2019, starts deep residual networks) and keep what changes over
        time, where attention drawn as a new block draws it averages the frames
        (docs/pretraining.md, "Where time is lost"). With `W` tied, the logits
        `x_i W (x_j W)^T` favour each frame's own and similar frames.

        `like_new_block`: each weight drawn as a new block draws it (a new
        `MultiHeadAttention` of the same configuration)."""
        if like_new_block:
            fresh = keras.layers.MultiHeadAttention.from_config(self._attention.get_config())
            shape = (1, 1, self._attention.query_dense.kernel.shape[0])
            fresh.build(shape, shape)
            for variable, value in zip(self._attention.weights, fresh.weights, strict=True):
                variable.assign(value)
            return
        tied = None
        for variable in self._attention.trainable_weights:
            if variable.path.endswith("bias"):
                value = self.bias_initializer(variable.shape, dtype=variable.dtype)
            elif variable.path.split("/")[-2] in ("query", "key", "value"):
                if tied is None:
                    tied = self.kernel_initializer(variable.shape, dtype=variable.dtype)
                value = keras.ops.copy(tied)  # equal values, buffers of their own (JAX
                # donates each variable's buffer to the compiled train step)
            else:
                value = self.kernel_initializer(variable.shape, dtype=variable.dtype)
            variable.assign(value)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "num_heads": self.num_heads,
                "dropout": self.dropout,
                "activation": keras.activations.serialize(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "normalize_first": self.normalize_first,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
