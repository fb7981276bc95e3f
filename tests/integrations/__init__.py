"""Tests of ``tadastream.integrations``."""
