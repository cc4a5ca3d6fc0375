"""ECGs: the modality plugin, WFDB/DICOM readers, the shared signal pipeline and cache, and the ECG data sources."""
