"""metaaug: meta-learned image augmentation, proven in a DVC + MLflow pipeline."""

import os

# Albumentations checks PyPI for updates on import; metaaug never touches the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
