"""The Gradio demo (``shine demo``, the Space in ``demo/``): `engine` holds models and per-session adapters with no
UI dependency, `app` draws the interface over it (imports gradio, an optional extra), `hub` pushes a session's adapter.
"""
