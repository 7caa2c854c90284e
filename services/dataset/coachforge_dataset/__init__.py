"""Dataset service: uploaded files, validation reports, datasets."""
