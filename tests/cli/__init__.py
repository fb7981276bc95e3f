"""Tests of ``tadastream.cli``."""
