"""Tests of ``tadastream.codec``."""
