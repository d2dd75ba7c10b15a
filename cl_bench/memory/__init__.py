"""Replay buffer policies. Stored images stay uint8."""
