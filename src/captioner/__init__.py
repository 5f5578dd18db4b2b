"""captioner: image captioning ("看图说话") as a reproducible DVC pipeline."""

import os as _os

# Quieten TensorFlow's C++ start-up chatter unless the user asked for it.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
