"""Loading pretrained models: device and dtype choice (devices.py), hub access that fails
fast offline (hub.py), and the cached loaders of CLIP/SigLIP and image-text-to-text VLMs."""
