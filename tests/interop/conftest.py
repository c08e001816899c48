"""Import tfda.interop before the test modules import earth2studio's model zoo, so the
zoo is imported with its cheap caller lookup (interop/_e2s.py), as a user's would be."""

import importlib.util

if importlib.util.find_spec("earth2studio") is not None:
    import tfda.interop._e2s  # noqa: F401
