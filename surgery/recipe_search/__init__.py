"""Layer 7, the recipe search: from a model, data, a runtime and a budget to a saved, measured recipe.

    result = surgery.search("folder", "digits", runtime="openvino", latency=0.5, max_drop=1.0, output="out/")

See :mod:`surgery.recipe_search.runner` for how it searches and ``docs/search.md`` for the guide.
"""

from surgery.recipe_search.runner import SearchResult, search

__all__ = ["SearchResult", "search"]
