"""Tests of ``tadastream.server``."""
