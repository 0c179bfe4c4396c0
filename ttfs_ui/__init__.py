"""UI support for the Streamlit explorer (app.py, pages/): session state, cached core calls, pure figure builders,
tables and newcomer explanations. `ttfs_core` never imports this package."""

import ttfs_core  # noqa: F401 — first, whatever page a server opens first: it sets OpenMP's wait policy before torch loads
