"""models.losses: distillation from a network's teacher."""
import numpy as np
import pytest
import tensorflow as tf

from models import losses


@pytest.mark.parametrize("multilabel", [False, True])
def test_teacher_equal_to_student_adds_zero(multilabel):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    labels = (rng.random((6, 5)) > 0.5).astype(np.float32) if multilabel else rng.integers(0, 5, 6)
    plain = losses.label_loss(labels, logits, multilabel=multilabel)
    soft = losses.distillation_loss(labels, logits, logits, beta=1.0, temperature=3.0,
                                    multilabel=multilabel)
    np.testing.assert_allclose(soft.numpy(), 0.0, atol=1e-6)
    mixed = losses.distillation_loss(labels, logits, logits, beta=0.25, temperature=3.0,
                                     multilabel=multilabel)
    np.testing.assert_allclose(mixed.numpy(), 0.75 * plain.numpy(), rtol=1e-5, atol=1e-6)


def test_beta_zero_gives_the_labels_only_gradients():
    rng = np.random.default_rng(1)
    logits = tf.Variable(rng.normal(size=(4, 3)).astype(np.float32))
    teacher = rng.normal(size=(4, 3)).astype(np.float32)
    labels = np.array([0, 2, 1, 1])
    with tf.GradientTape(persistent=True) as tape:
        a = tf.reduce_mean(losses.distillation_loss(labels, logits, teacher, beta=0.0,
                                                    temperature=2.0))
        b = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True))
    np.testing.assert_allclose(tape.gradient(a, logits), tape.gradient(b, logits), atol=1e-7)


def test_distillation_pulls_towards_the_teacher_and_is_positive():
    rng = np.random.default_rng(2)
    student = tf.Variable(rng.normal(size=(8, 4)).astype(np.float32))
    teacher = rng.normal(size=(8, 4)).astype(np.float32) * 3
    labels = teacher.argmax(axis=1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(losses.distillation_loss(labels, student, teacher, beta=1.0,
                                                       temperature=2.0))
    assert float(loss) > 0
    moved = student - 0.5 * tape.gradient(loss, student)
    after = tf.reduce_mean(losses.distillation_loss(labels, moved, teacher, beta=1.0,
                                                    temperature=2.0))
    assert float(after) < float(loss)


def test_bad_settings_are_refused():
    x = np.zeros((1, 2), np.float32)
    with pytest.raises(ValueError, match="beta in \\[0, 1\\]"):
        losses.distillation_loss([0], x, x, beta=1.5, temperature=1.0)
    with pytest.raises(ValueError, match="temperature > 0"):
        losses.distillation_loss([0], x, x, beta=0.5, temperature=0.0)
    with pytest.raises(ValueError, match="expected teacher logits"):
        losses.distillation_loss([0], x, None, beta=0.5, temperature=1.0)
