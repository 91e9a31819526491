"""One declarative module per task; importing this package registers them all."""
from data.tasks import (  # noqa: F401  (registration, order matters for derived tasks)
    mnist, fashion_mnist, cifar10, svhn, gtsrb, speech_commands, tts_commands, us8k,
    celeb_a, visual_domain_decathlon, derived, noisy_keywords,
)
