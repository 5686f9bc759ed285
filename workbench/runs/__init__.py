"""The one job runner (runner.py) and what it drives (step.py): every long piece of work,
OCR, predictions, embeddings and CAM, runs through it; lock.py keeps one heavy job at a
time, listing.py shows jobs to people."""
