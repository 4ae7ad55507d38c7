"""`vqgan-lc app`: a local web page that shows a codebook.

Tokenize (an image, its reconstruction and its token map; a token's entry, exemplar patches and
usage), Atlas (entries by id, by usage, by class; the usage histogram of an evaluation set) and
Generate (samples of a generator, their token maps and the entries no real image used).
`state.AppState` computes, `server` serves it on 127.0.0.1, `generator` holds every call
to a generator.
"""
from .server import serve
from .state import AppState

__all__ = ["AppState", "serve"]
