"""Tests of ``tadastream.service``."""
