"""UI support for the Streamlit explorer (app.py, pages/): session state, cached core calls, pure figure builders,
tables and newcomer explanations. `ttfs_core` never imports this package."""
