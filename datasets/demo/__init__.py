"""The offline demo data generators (ECG, ECG-QA, MIMIC-IV-ECG, X-ray, patients), built once under the cache."""
