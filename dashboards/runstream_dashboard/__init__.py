"""The Runstream dashboard (Streamlit). Run it with `runstream dashboard` or `runstream up`."""

from pathlib import Path

APP_PATH = Path(__file__).resolve().parent / "app.py"
