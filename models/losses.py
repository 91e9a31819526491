"""Per-example losses of the library: labels, and distillation from a network's original self.

When networks are zipped (MTZ) or their pages matched (NWV), each can learn not
only from its labels but from the outputs of the network it was before, its
*teacher* (Hinton et al. 2015):

    L = (1 − β) · CE(y, s) + β · T² · KL(p_T(t) ‖ p_T(s)),   p_T(z) = softmax(z / T),

with s the student's and t the teacher's logits. T² keeps the gradient scale of
the soft term independent of T. For a multi-label (sigmoid) head each attribute
is a Bernoulli variable and the KL is averaged over attributes, like Keras'
binary cross-entropy. β = 0 is plain cross-entropy; a teacher equal to the student
adds exactly zero.

    >>> import numpy as np
    >>> logits = np.array([[2.0, 0.0, -1.0]], np.float32)
    >>> float(distillation_loss([0], logits, logits, beta=1.0, temperature=2.0)[0])
    0.0
"""
from __future__ import annotations

import tensorflow as tf

__all__ = ["distillation_loss", "label_loss"]


def label_loss(labels, logits, *, multilabel: bool = False):
    """Per-example cross-entropy of logits against labels.

    Args:
      labels: [batch] int class ids, or [batch, C] {0, 1} attributes (multi-label).
      logits: [batch, C].
      multilabel: sigmoid cross-entropy averaged over attributes (Keras'
        BinaryCrossentropy convention) instead of softmax cross-entropy.
    Returns:
      [batch] float32 losses.
    """
    logits = tf.convert_to_tensor(logits, tf.float32)
    if multilabel:
        labels = tf.cast(labels, tf.float32)
        per = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
        return tf.reduce_mean(per, axis=-1)
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def distillation_loss(labels, logits, teacher_logits, *, beta: float, temperature: float,
                      multilabel: bool = False):
    """Per-example (1 − β) CE(labels, logits) + β T² KL(teacher ‖ student) at temperature T.

    Args:
      labels: [batch] class ids or [batch, C] attributes.
      logits: [batch, C] student logits (gradients flow here).
      teacher_logits: [batch, C] teacher logits (treated as constants), or None
        when β = 0.
      beta: weight of the distillation term in [0, 1].
      temperature: T > 0.
      multilabel: Bernoulli attributes (sigmoid) instead of one softmax.
    Returns:
      [batch] float32 losses.
    Raises:
      ValueError: β outside [0, 1], T <= 0, or β > 0 without teacher logits.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"expected beta in [0, 1], received {beta!r}")
    if not temperature > 0:
        raise ValueError(f"expected temperature > 0, received {temperature!r}")
    hard = label_loss(labels, logits, multilabel=multilabel)
    if beta == 0.0:
        return hard
    if teacher_logits is None:
        raise ValueError("expected teacher logits for distillation (beta > 0), received None")
    s = tf.convert_to_tensor(logits, tf.float32) / temperature
    t = tf.stop_gradient(tf.convert_to_tensor(teacher_logits, tf.float32)) / temperature
    if multilabel:
        log_ps = tf.stack([tf.math.log_sigmoid(s), tf.math.log_sigmoid(-s)], axis=-1)
        log_pt = tf.stack([tf.math.log_sigmoid(t), tf.math.log_sigmoid(-t)], axis=-1)
        kl = tf.reduce_mean(tf.reduce_sum(tf.exp(log_pt) * (log_pt - log_ps), axis=-1), -1)
    else:
        log_ps, log_pt = tf.nn.log_softmax(s, axis=-1), tf.nn.log_softmax(t, axis=-1)
        kl = tf.reduce_sum(tf.exp(log_pt) * (log_pt - log_ps), axis=-1)
    return (1.0 - beta) * hard + beta * temperature ** 2 * kl
