"""Streamlit app for the photo search engine: ``python -m ui --index DIR``."""
