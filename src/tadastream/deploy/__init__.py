"""Deployments of the speech server beyond one process.

* :mod:`.ray` (``tadastream[ray]``): Ray Serve, the ``tadastream serve`` app on many replicas of one
  model each, behind Ray's HTTP proxy, with back-pressure and autoscaling.

Importing this package imports no deployment framework; each submodule imports its own when used.
"""
