"""Tests of ``tadastream.drivers``."""
