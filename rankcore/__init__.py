"""freshrank's core: the model and the contracts both sides of the loop share.

Events, samples, vocabularies, features, the ranker, metrics, the holdout and the errors live
here. The stream side (``updater``) and the release side (``exporter``) both build on it; it
imports no other freshrank package (``make lint`` checks the layers with import-linter).
"""
