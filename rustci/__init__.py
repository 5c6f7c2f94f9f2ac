"""The public Python SDK and the ``rustci`` command line tool.

Both speak to the coordinator over its HTTP API only: :class:`RustCIClient` is the SDK, ``rustci.cli`` the
command line (``rustci runners list``, ``rustci jobs submit ...``), and ``rustci local up`` starts a
coordinator and one agent on this machine for development.
"""

from rustci.client import JobWaitTimeout, RustCIClient

__all__ = ["JobWaitTimeout", "RustCIClient"]
