"""Loading pretrained models: device and dtype choice (devices.py), hub access that fails
fast offline (hub.py), the one cached Hugging Face loader (loader.py), and what is specific to
each kind: CLIP/SigLIP (clip.py), image-text-to-text VLMs (vlm.py), text classifiers
(text_classifier.py)."""
