"""Tests of ``tadastream.generation``."""
