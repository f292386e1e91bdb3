"""ComfyUI node adapters for DreamEdit3D: convert types, report progress, honour interruption; no algorithms here."""
