"""What every modality's data shares: manifest tables and patient records of several modalities."""
