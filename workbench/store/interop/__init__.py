"""Formats other tools speak, one module per format: predictions computed elsewhere
(`predictions`), Hugging Face datasets (`hf_dataset`) and Label Studio (`label_studio`).
`common` holds what they share: finding a meme by path / sha256 / id, class words, the
formula-looking-text check. The CLI (workbench.cli.interop) and the Export / Data pages call them."""
