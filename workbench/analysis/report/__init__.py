"""The self-contained HTML (and optional PDF) report of a study."""
