//! Datasets, augmentation (DSA with exact adjoints), ZCA whitening, selection and image grids.
