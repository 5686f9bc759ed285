"""Explanations of model decisions: CAM heat maps over CLIP's vision tower (cam.py)."""
