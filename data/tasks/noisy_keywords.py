"""Noisy, shifted variants of the keyword tasks, for evaluation (`<task>_noisy`).

Same files and labels as the clean task; every clip gets its word at a random
place in the second and white or brown noise at 5-30 dB SNR, fixed per clip
(seeded by its content), so scores are reproducible. No training augmentation:
these tasks measure how a keyword network trained on `<task>` copes with clips
like real ones.
"""
from data import keywords
from data.spec import TaskSpec, get, register_task

NOISY_OF = ("tts_commands", "tts_directions", "tts_control", "speech_commands")

for _name in NOISY_OF:
    _base = get(_name)
    register_task(TaskSpec(
        name=f"{_name}_noisy", kind=_base.kind, input_shape=_base.input_shape,
        class_names=_base.class_names, preprocess=keywords.noisy_preprocess,
        batch_features=keywords.batch_features,
        tfds_name=None, default_model=_base.default_model,
        source_task=_base.source_task or _name, label_map=_base.label_map,
        sample_rate=_base.sample_rate))
