"""Tests of ``tadastream.engine``."""
