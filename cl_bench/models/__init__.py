"""Backbones with one classifier head over all classes of the stream."""
