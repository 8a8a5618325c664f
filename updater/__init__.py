"""freshrank updater, the stream side: Kafka events -> clean -> join -> batch -> learn -> checkpoint.

It hands snapshots to the release side (:mod:`exporter.release`); both build on :mod:`rankcore`.
"""
