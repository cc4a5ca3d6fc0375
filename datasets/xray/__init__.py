"""Chest X-rays: the modality plugin, the DICOM pixel pipeline and cache, and the X-ray data sources."""
