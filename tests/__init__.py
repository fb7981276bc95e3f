"""tadastream's tests, in folders that mirror the package (``tests/server`` tests ``tadastream.server``).

Each folder is a package, so pytest imports a test file under its dotted name (``tests.server.test_server``)
with the repository root on ``sys.path``: two folders may hold files of the same name, and shared code is
imported as ``tests.helpers``.
"""
