"""The one job runner (runner.py) and what it drives (step.py): every long piece of work,
OCR, predictions, embeddings, CAM and hashes, runs through it; lock.py keeps one heavy job
at a time, listing.py shows jobs to people, and background.py runs the jobs the app starts
on the server (one worker thread per process), so leaving a page never stops one."""
