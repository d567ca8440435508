"""The benchmark's peer: the FastAPI + fastapi-users reset service a Python team would pick
(``app.py``, run under its own venv), and the HTTP load generator aimed at it."""
