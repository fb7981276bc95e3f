"""Tests of ``tadastream.nn``."""
