"""Data: finding the images of a split, the one preprocessing preset (file → model input),
the decoded-image cache, patients and the grouped validation split, index batches,
batch augmentation and the LightningDataModule that puts them together."""
