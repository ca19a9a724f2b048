"""prompttune: prompt tuning for pretrained language models.

A prompt (a template + a verbalizer) is attached to a backbone by a method, trained by the trainer,
judged by metrics, and saved as a small artifact that any copy of the backbone can load.
"""

__version__ = "0.1.0"

from .artifact import load  # noqa: E402
from .backbone import Backbone  # noqa: E402
from .errors import PromptTuneError  # noqa: E402
from .generation import GenerationModel  # noqa: E402
from .model import PromptModel  # noqa: E402
from .template import Template  # noqa: E402
from .verbalizer import Verbalizer  # noqa: E402

__all__ = ["Backbone", "GenerationModel", "PromptModel", "PromptTuneError", "Template", "Verbalizer", "load", "__version__"]
