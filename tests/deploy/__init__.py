"""Tests of ``tadastream.deploy``."""
