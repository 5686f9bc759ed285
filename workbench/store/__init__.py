"""The bottom layer: the database (schema, engine, sessions), image files (the one loader,
ingest, demo memes), labels and consensus, annotations.csv, catalogue queries, the OCR text
each meme goes by, predictions.csv, and backup/restore. Imports nothing above it."""
