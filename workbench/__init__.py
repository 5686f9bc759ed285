"""VLMemes Workbench: the domain library behind the Streamlit pages and `python -m workbench`."""

__version__ = "0.1.0"
