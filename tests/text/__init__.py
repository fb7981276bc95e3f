"""Tests of ``tadastream.text`` and the text-handling modules beside it: scripts, timestamps, timecode."""
