"""Code shared by tests in several folders, not tests themselves.

Imported by its full name: ``from tests.helpers.server_harness import LiveServer``.
"""
