"""vlkd service package.

Importing ``app`` is cheap on purpose: the training package imports
``app.preprocess``, ``app.decode`` and ``app.contract`` without pulling in
FastAPI or onnxruntime. The ASGI application lives in ``app.main``.
"""
