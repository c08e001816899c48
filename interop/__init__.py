"""Bridges to other frameworks, installed as an optional extra.

``tfda.interop.e2s_prognostic``, ``tfda.interop.e2s_assimilation`` and
``tfda.interop.e2s_data`` connect tfda to NVIDIA earth2studio (its prognostic models,
its ``AssimilationModel`` protocol and its data sources); they need
``pip install "tfda[earth2studio]"``. Importing this package itself needs nothing,
and no module outside ``tfda.interop`` imports earth2studio.
"""
