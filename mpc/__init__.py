"""Secure multi-party computation for private inference (hazmat layer).

Everything here is protocol machinery: callers outside `mpc` should go through the SDK's
`privacy="mpc"` modes once they exist. This package never imports gRPC or the other bottom
packages (`tee`, `verification`).
"""

from __future__ import annotations
